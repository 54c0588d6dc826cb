"""Which weights answer for a character: registry versions loaded into the generator, hot-swapped.

acquire() returns a WeightsLease for the character's active version (or a pinned one): the adapter
name the generator serves, counted as in flight until the lease is released. A promotion or
rollback (Registry.subscribe) preloads the new version, so later requests get it at once,
while requests in flight finish on the version they started with; an old version leaves
memory only when its last request has released it.
"""

from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass, field
from typing import Callable

from adapters.character import weights_from_character
from adapters.errors import IncompatibleAdapter, RegistryError
from adapters.full_delta import load_full
from runtime.generation.types import BASE_ADAPTER
from runtime.refs import WeightsRef

log = logging.getLogger("personae.weights")

LORA_KINDS = ("lora", "hybrid", "composite")


def _noop() -> None:
    return None


@dataclass
class WeightsLease:
    """The weights one reply uses, held until release() (the hot-swap bookkeeping counts it)."""

    version: str = "base"  # how the log names it: 'base' or 'lora:pixel@3'
    adapter: str = BASE_ADAPTER  # the name the generator serves it under
    _release: Callable[[], None] = field(default=_noop, repr=False)

    def release(self) -> None:
        """The reply is done with these weights (idempotent)."""
        self._release()

    def __enter__(self) -> "WeightsLease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class FullLoader:
    """How to serve a full version: call it for the model in memory, or materialise() for a plain model folder."""

    def __init__(self, registry, version, base):
        self.registry, self.version, self.base = registry, version, base

    def __call__(self):
        return load_full(self.version, self.base)

    def materialise(self):
        """The version as a plain model folder (built once, cached in the registry; for engines that load folders)."""
        return self.registry.materialise(self.version)


class WeightsManager:
    """Registry versions -> generator adapters / full models, reference-counted for hot swap."""

    def __init__(self, registry, generator, base):
        """`generator` and `base` are getters: the engine builds them on first use."""
        self.registry = registry
        self._generator = generator
        self._base = base
        self._lock = threading.RLock()
        self._refs: collections.Counter = collections.Counter()
        self._loaded: dict[str, object] = {}  # label -> Version registered in the generator
        self._current: dict[str, str] = {}  # character -> label of its active version (as last seen)
        self._adopted: set[str] = set()  # characters whose packaged weights were looked at
        self._adopting = threading.Lock()  # a first reply waits while another registers the packaged weights
        registry.subscribe(self._on_change)

    @property
    def generator(self):
        """The generator serving the weights."""
        return self._generator()

    def adopt_packaged(self, character) -> None:
        """Register the weights a character plugin ships, the first time it answers with no registry version.

        Installing a character package is enough: its weights become version 1 (active) of its
        registry history. A character that has versions already is left alone, so rollbacks and
        removals stay the operator's decisions; broken packaged weights are logged, not fatal.
        """
        if character.id in self._adopted:
            return
        # Chats that start together (a server's first minute, a benchmark) all wait for the registration: marked
        # done before it, the others answered on the bare base while the first copied the weights in.
        with self._adopting:
            if character.id not in self._adopted:
                try:
                    self._adopt(character)
                finally:
                    self._adopted.add(character.id)

    def _adopt(self, character) -> None:
        try:
            if weights_from_character(character) is None or self.registry.versions(character.id):
                return
            version = self.registry.add_from_character(character, activate=True)
            log.info("%s: registered the weights its package ships as %s", character.id, version.ref)
        except IncompatibleAdapter as error:
            # Made for another base model (the built-ins ship SmolLM2 weights): not broken, just not for this one.
            log.warning("%s: the weights its package ships were made for another base model (%s); it answers "
                        "with its card on this base", character.id, error)
        except (RegistryError, ValueError, OSError) as error:
            log.error("%s: the weights its package ships cannot be used (%s); it answers with the base model",
                      character.id, error)

    def acquire(self, ref: WeightsRef) -> WeightsLease:
        """The weights to answer with now; release the lease when the reply is done."""
        character_id, pinned = ref.character, not ref.is_active
        for _ in range(3):  # a broken active version is marked failed and the next one tried
            found = self._lookup(ref)
            if found is None:
                return WeightsLease()
            label = found.label
            with self._lock:
                try:
                    self._ensure_loaded(found)
                except (RegistryError, ValueError, OSError) as error:
                    if pinned:
                        raise
                    log.error("%s cannot be served (%s); marking it failed", found.ref, error)
                    self.registry.mark_failed(found.character, found.number, f"failed to load: {error}")
                    continue
                self._refs[label] += 1
                if not pinned:
                    # A promotion made by another process shows up here, not through subscribe.
                    previous = self._current.get(character_id)
                    self._current[character_id] = label
                    if previous and previous != label:
                        self._maybe_unload(previous)
            return WeightsLease(version=label, adapter=label, _release=self._releaser(label))
        raise RegistryError(f"{character_id}: no version of its weights could be loaded; see the log")

    def _lookup(self, ref: WeightsRef):
        """The registry version wanted (None: the bare base)."""
        if ref.is_active:
            return self.registry.active(ref.character)
        if ref.is_base:
            return None
        return self.registry.get(ref.character, ref.version)

    def _ensure_loaded(self, version) -> None:
        """Verify a version once and load it into the generator (between its decode steps)."""
        label = version.label
        generator = self.generator
        if label in self._loaded and generator.knows(label):
            return
        base = self._base()
        adopt_base(self.registry, base)
        self.registry.verify(version, base=base)
        if version.kind in LORA_KINDS:
            generator.load_adapter(label, version.folder)
        elif version.kind == "full":
            generator.load_model(label, loader=FullLoader(self.registry, version, base))
        else:
            raise ValueError(f"{version.ref}: weights of kind {version.kind!r} cannot be served")
        self._loaded[label] = version
        log.info("weights %s ready", label)

    def _releaser(self, label: str):
        done = threading.Event()

        def release() -> None:
            if done.is_set():  # release is idempotent
                return
            done.set()
            with self._lock:
                self._refs[label] -= 1
                if self._refs[label] <= 0:
                    del self._refs[label]
                    self._maybe_unload(label)

        return release

    def _maybe_unload(self, label: str) -> None:
        """Free a version nobody uses any more and that is no longer active."""
        if self._refs.get(label) or label in self._current.values() or label not in self._loaded:
            return
        version = self._loaded.pop(label)
        generator = self.generator
        try:
            if version.kind == "full":
                generator.unload_model(label, wait=False)
            else:
                generator.unload_adapter(label, wait=False)
        except RuntimeError:
            pass  # the generator is closed: nothing to free
        log.info("weights %s unloaded (no longer active, no request in flight)", label)

    def _on_change(self, character: str, version) -> None:
        """Hot swap: preload the newly active version; free the old one once its requests finish."""
        with self._lock:
            previous = self._current.pop(character, None)
            if version is not None:
                try:
                    self._ensure_loaded(version)
                    self._current[character] = version.label
                except Exception as error:  # noqa: BLE001 - acquire() retries and reports
                    log.error("could not preload %s: %s", version.ref, error)
            if previous is not None:
                self._maybe_unload(previous)

    def status(self) -> dict:
        """Loaded versions and requests in flight on each (for `personae status`)."""
        with self._lock:
            return {"loaded": sorted(self._loaded), "in_flight": dict(self._refs), "active": dict(self._current)}


def adopt_base(registry, base) -> None:
    """Tell a registry built before the model loaded which base it serves (compat checks, deltas)."""
    if getattr(registry, "base", None) is None:
        registry.base = base
    if not getattr(registry, "base_fingerprint", None):
        registry.base_fingerprint = getattr(base, "fingerprint", None)

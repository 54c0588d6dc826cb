"""Full fine-tunes on vLLM endpoints of their own, each serving the version's materialised model folder.

vLLM has no run-time loading of whole models, so a full version gets its own server: a running one
named in `full_urls` (started by the operator on `personae adapters materialise NAME@N`), or one
Personae starts with `full_command` on that folder. Whenever neither can answer (starting failed, the
server died, it is down or serves other weights, or `max_full_servers` own servers run already), the
local generator answers that version and every reply says why. A keeper thread per version brings
vLLM back: an own server is started again (`restart_attempts` in a row, waits doubling from
`restart_backoff`), a `full_urls` server is probed every `retry_dead` seconds, a version over the
cap starts its server once another one stops.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from plugins.vllm.endpoints import EndpointPool
from plugins.vllm.server import ManagedServer

log = logging.getLogger("personae.vllm")
MAX_BACKOFF = 300.0  # seconds: the longest wait between two restarts
STABLE_SECONDS = 600.0  # an own server that served this long has its failure count reset
WATCH_SECONDS = 1.0  # how often a keeper looks at its own server's process


def vllm_ref(label: str) -> str:
    """'full:pixel@3' -> 'pixel@3' (how full_urls names versions)."""
    return label.split(":", 1)[-1]


class FullEndpoint:
    """One full version: served by `pool` when vLLM answers it, else locally (`fallback` says why)."""

    def __init__(self, label: str, loader, own: bool):
        self.label, self.loader, self.own = label, loader, own
        self.pool: EndpointPool | None = None  # set while a vLLM endpoint serves the version
        self.server: ManagedServer | None = None  # own: the server Personae runs for it
        self.folder: Path | None = None
        self.fallback = ""  # why the local generator answers now
        self.ready = threading.Event()  # the first answer is known: vLLM, or local and why
        self.wake = threading.Event()  # ends a keeper's wait early (removal, a free slot)
        self.removed = False
        self.slot = False  # own: counts against max_full_servers
        self.local_loaded = False
        self.lock = threading.Lock()

    def describe(self) -> str:
        if self.pool is not None:
            return f"vllm (own endpoint {self.pool.endpoints[0].url})"
        if not self.ready.is_set():
            return "vllm (own endpoint, starting)"
        return f"local ({self.fallback})"


class FullEndpoints:
    """The own endpoints of full versions, by generator label."""

    def __init__(self, config, client, log_dir: Path, local):
        """`local()` is the local generator that answers a version while vLLM cannot."""
        self.config, self.client, self.log_dir, self.local = config, client, Path(log_dir), local
        self.versions: dict[str, FullEndpoint] = {}
        self._lock = threading.Lock()

    def configured(self, label: str) -> bool:
        """Whether this version gets a vLLM endpoint of its own."""
        return vllm_ref(label) in self.config.full_urls or bool(self.config.full_command)

    def add(self, label: str, loader) -> FullEndpoint:
        """Attach a configured server (now) or start one (in the background); a keeper thread looks after it."""
        own = vllm_ref(label) not in self.config.full_urls
        with self._lock:
            if label in self.versions:
                return self.versions[label]
            entry = self.versions[label] = FullEndpoint(label, loader, own)
        if not own:
            self._attach(entry)
        threading.Thread(target=self._keep_own if own else self._keep_remote, args=(entry,), daemon=True,
                         name=f"vllm-full-{label}").start()
        return entry

    def get(self, label: str) -> FullEndpoint | None:
        return self.versions.get(label)

    def route(self, entry: FullEndpoint) -> EndpointPool | None:
        """The pool to send a request to, or None: the local generator answers (a dead server is noticed here)."""
        with entry.lock:
            pool = entry.pool
            if pool is None:
                return None
            if entry.own and not entry.server.running():
                self._to_local(entry, self._death(entry))
                entry.wake.set()
                return None
            if not entry.own and not pool.endpoints[0].alive:  # taken out when a reply failed on it
                self._to_local(entry, f"full_urls: its vLLM server {pool.endpoints[0].url} stopped answering "
                                      f"({pool.endpoints[0].error}); {self._recheck_note()}")
                return None
            return pool

    def unanswered(self, entry: FullEndpoint, pool: EndpointPool) -> None:
        """A request found the version's endpoint not answering: local until its keeper brings it back."""
        endpoint = pool.endpoints[0]
        note = "watched, and started again if it exited" if entry.own else self._recheck_note()
        with entry.lock:
            if entry.pool is pool:
                self._to_local(entry, f"{'full_command' if entry.own else 'full_urls'}: its vLLM server "
                                      f"{endpoint.url} does not answer ({endpoint.error}); {note}")
        entry.wake.set()

    # --- going local and back -------------------------------------------------------------------

    def _to_local(self, entry: FullEndpoint, reason: str) -> None:
        """From now on the local generator answers this version (loaded there on first need), saying why."""
        if entry.removed:
            entry.ready.set()  # nobody should wait on a version that is gone
            return
        if entry.pool is not None or not entry.local_loaded:  # (again after a spell on vLLM freed it: a no-op if not)
            self.local().load_model(entry.label, entry.loader)
            entry.local_loaded = True
        if reason != entry.fallback:
            log.error("%s is answered by the local generator, not vLLM (%s)", entry.label, reason)
        entry.pool, entry.fallback = None, reason
        entry.ready.set()

    def _to_vllm(self, entry: FullEndpoint, pool: EndpointPool) -> None:
        with entry.lock:
            entry.pool, entry.fallback = pool, ""
            if entry.local_loaded:  # freed once its local replies end; the loader stays for stragglers
                self.local().unload_model(entry.label, forget=False, wait=False)
        entry.ready.set()
        log.info("%s is served by its own vLLM endpoint %s", entry.label, pool.endpoints[0].url)

    def _set_local(self, entry: FullEndpoint, reason: str) -> None:
        """_to_local from a keeper thread: a failure is logged (its requests meet it), the keeper carries on."""
        try:
            with entry.lock:
                self._to_local(entry, reason)
        except Exception as error:  # noqa: BLE001 - e.g. the local generator cannot hold the model
            log.error("%s: the local generator cannot answer it either (%s)", entry.label, error)
            entry.fallback = reason
            entry.ready.set()

    # --- full_urls: the operator's server ----------------------------------------------------------

    def _recheck_note(self) -> str:
        return f"checked again every {self.config.retry_dead:g} s"

    def _attach(self, entry: FullEndpoint) -> bool:
        """Use the configured server if it answers and serves this version's materialised folder."""
        url = self.config.full_urls[vllm_ref(entry.label)]
        try:
            entry.folder = entry.folder or Path(entry.loader.materialise())
            pool = EndpointPool([url], self.client, self.config.retry_dead,
                                hint=f"start {vllm_ref(entry.label)}'s server again, or fix [plugins.vllm] full_urls")
            endpoint = pool.endpoints[0]
            if not pool.probe(endpoint):
                raise RuntimeError(f"its vLLM server {url} is unreachable ({endpoint.error})")
            # The same folder name, wherever the volume is mounted there: anything else is other weights.
            if Path(endpoint.root).name != entry.folder.name:
                raise RuntimeError(f"its vLLM server {url} serves {endpoint.root or endpoint.model!r}, not the "
                                   f"materialised folder {entry.folder} (start it with --model on that folder)")
        except Exception as error:  # noqa: BLE001 - any failure: the local generator answers, with the reason
            self._set_local(entry, f"full_urls: {error}; {self._recheck_note()}")
            return False
        self._to_vllm(entry, pool)
        return True

    def _keep_remote(self, entry: FullEndpoint) -> None:
        """While the version is local, probe its server every retry_dead seconds and use it once it answers."""
        while not entry.removed:
            entry.wake.wait(self.config.retry_dead)
            entry.wake.clear()
            if not entry.removed and entry.pool is None:
                self._attach(entry)

    # --- full_command: Personae's own server -----------------------------------------------------

    def _keep_own(self, entry: FullEndpoint) -> None:
        """Start the version's server, watch it, start it again when it dies; give up after restart_attempts."""
        config, failures = self.config, 0
        try:
            while not entry.removed:
                if not self._take_slot(entry):
                    entry.wake.wait(config.retry_dead)
                    entry.wake.clear()
                    continue
                reason = self._start(entry)
                if reason is None:  # healthy: watch the process until it dies or the version goes
                    since = time.monotonic()
                    while not entry.removed and entry.server.running():
                        entry.wake.wait(WATCH_SECONDS)
                        entry.wake.clear()
                        if entry.pool is None and not entry.removed:  # a request found it silent: ask again
                            pool = self._own_pool(entry)
                            if pool.probe(pool.endpoints[0]):
                                self._to_vllm(entry, pool)
                    if entry.removed:
                        break
                    failures = 0 if time.monotonic() - since >= STABLE_SECONDS else failures
                    reason = self._death(entry)
                failures += 1
                if failures > config.restart_attempts:
                    self._set_local(entry, f"{reason}; gave up after {failures} failure(s) in a row "
                                           f"(restart_attempts = {config.restart_attempts}); restart Personae to "
                                           "try again")
                    break
                wait = min(MAX_BACKOFF, config.restart_backoff * 2 ** (failures - 1))
                self._set_local(entry, f"{reason}; starting it again in {wait:g} s (restart {failures} of "
                                       f"{config.restart_attempts})")
                entry.wake.wait(wait)
                entry.wake.clear()
        finally:
            if entry.server is not None:
                entry.server.stop()
            self._free_slot(entry)

    def _start(self, entry: FullEndpoint) -> str | None:
        """Materialise the version (once) and start its server; None when it serves, else why not."""
        config = self.config
        try:
            entry.folder = entry.folder or Path(entry.loader.materialise())
            if entry.server is None:
                entry.server = ManagedServer(config.full_command, entry.folder, host=config.host, args=config.args,
                                             env=config.env, log_dir=self.log_dir, lora=False)
            server = entry.server
            server.start(config.start_timeout)
            if entry.removed:  # unloaded while it started: nobody needs it any more
                return None
            pool = self._own_pool(entry)
            if not pool.probe(pool.endpoints[0]):
                raise RuntimeError(f"the vLLM server started on it ({server.url}) does not list its model")
        except Exception as error:  # noqa: BLE001 - any failure: the local generator answers, with the reason
            if entry.server is not None:
                entry.server.stop()
            return f"full_command: {error}"
        self._to_vllm(entry, pool)
        return None

    def _own_pool(self, entry: FullEndpoint) -> EndpointPool:
        server = entry.server
        return EndpointPool([server.url], self.client, self.config.retry_dead,
                            hint=f"the server Personae started for {vllm_ref(entry.label)} stopped (see "
                                 f"{server.log_path}); it is being started again")

    def _death(self, entry: FullEndpoint) -> str:
        server = entry.server
        return (f"full_command: its vLLM server {server.url} exited with status {server.returncode} "
                f"(log: {server.log_path})")

    def _take_slot(self, entry: FullEndpoint) -> bool:
        """Count this version against max_full_servers; past it, local with the reason until a slot frees."""
        with self._lock:
            running = [e.label for e in self.versions.values() if e.slot and e is not entry]
            if entry.slot or len(running) < self.config.max_full_servers:
                entry.slot = True
                return True
        cap = self.config.max_full_servers
        self._set_local(entry, f"max_full_servers = {cap} own vLLM servers run already ({', '.join(running)}); it "
                               "gets one when one of them stops (raise max_full_servers, or give it a full_urls "
                               "server)" if cap else "max_full_servers = 0: Personae starts no vLLM servers for "
                                                     "full versions (raise it, or give it a full_urls server)")
        return False

    def _free_slot(self, entry: FullEndpoint) -> None:
        with self._lock:
            entry.slot = False
            waiting = [e for e in self.versions.values() if e.own and not e.slot]
        for other in waiting:
            other.wake.set()

    # --- unloading --------------------------------------------------------------------------------

    def remove(self, label: str) -> None:
        """Forget a version: its keeper stops its server (in the background: it takes seconds), local copy freed."""
        with self._lock:
            entry = self.versions.pop(label, None)
        if entry is None:
            return
        with entry.lock:
            entry.removed = True
            entry.pool = None
        entry.wake.set()
        if entry.local_loaded:
            self.local().unload_model(label, forget=True, wait=False)

    def close(self) -> None:
        """Stop every server started for a full version."""
        with self._lock:
            entries, self.versions = list(self.versions.values()), {}
        for entry in entries:
            entry.removed = True
            entry.wake.set()
            if entry.server is not None:
                entry.server.stop()

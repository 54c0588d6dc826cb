"""Full fine-tunes on vLLM endpoints of their own, each serving the version's materialised model folder.

vLLM has no run-time loading of whole models, so a full version gets its own server: a running one
named in `full_urls` (started by the operator on `personae adapters materialise NAME@N`), or one
Personae starts with `full_command` on that folder. A server being started does not hold up other
characters: requests for that version wait until it answers; if it never does, the local generator
answers instead (the reason is logged and shown by `where`).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from plugins.vllm.endpoints import EndpointPool
from plugins.vllm.server import ManagedServer

log = logging.getLogger("personae.vllm")


def vllm_ref(label: str) -> str:
    """'full:pixel@3' -> 'pixel@3' (how full_urls names versions)."""
    return label.split(":", 1)[-1]


class FullEndpoint:
    """One full version's endpoint: `ready` once it answers, or once it failed (`fallback` says why)."""

    def __init__(self, label: str):
        self.label = label
        self.pool: EndpointPool | None = None
        self.server: ManagedServer | None = None
        self.folder: Path | None = None
        self.fallback = ""
        self.ready = threading.Event()
        self.removed = False

    def describe(self) -> str:
        if not self.ready.is_set():
            return "vllm (own endpoint, starting)"
        return f"vllm (own endpoint {self.pool.endpoints[0].url})"


class FullEndpoints:
    """The own endpoints of full versions, by generator label."""

    def __init__(self, config, client, log_dir: Path, fall_back):
        """`fall_back(label, reason, loader)` hands a version to the local generator."""
        self.config, self.client, self.log_dir, self.fall_back = config, client, Path(log_dir), fall_back
        self.versions: dict[str, FullEndpoint] = {}
        self._lock = threading.Lock()

    def configured(self, label: str) -> bool:
        """Whether this version gets a vLLM endpoint of its own."""
        return vllm_ref(label) in self.config.full_urls or bool(self.config.full_command)

    def add(self, label: str, loader) -> FullEndpoint:
        """Attach a configured server (now) or start one (in the background)."""
        with self._lock:
            if label in self.versions:
                return self.versions[label]
            entry = self.versions[label] = FullEndpoint(label)
        if vllm_ref(label) in self.config.full_urls:
            self._attach(entry, loader)
        else:
            threading.Thread(target=self._start, args=(entry, loader), daemon=True,
                             name=f"vllm-full-{label}").start()
        return entry

    def _attach(self, entry: FullEndpoint, loader) -> None:
        """A running server of the operator's: it must answer and serve this version's materialised folder."""
        url = self.config.full_urls[vllm_ref(entry.label)]
        try:
            entry.folder = Path(loader.materialise())
            pool = EndpointPool([url], self.client, self.config.retry_dead,
                                hint=f"start {vllm_ref(entry.label)}'s server again, or fix [plugins.vllm] full_urls")
            endpoint = pool.endpoints[0]
            if not pool.probe(endpoint):
                raise RuntimeError(f"its vLLM server {url} is unreachable ({endpoint.error})")
            # The same folder name, wherever the volume is mounted there: anything else is other weights.
            if Path(endpoint.root).name != entry.folder.name:
                raise RuntimeError(f"its vLLM server {url} serves {endpoint.root or endpoint.model!r}, not the "
                                   f"materialised folder {entry.folder} (start it with --model on that folder)")
            entry.pool = pool
            log.info("%s is served by its own vLLM endpoint %s", entry.label, url)
        except Exception as error:  # noqa: BLE001 - any failure: the local generator answers, with the reason
            self._fail(entry, loader, f"full_urls: {error}")
        entry.ready.set()

    def _start(self, entry: FullEndpoint, loader) -> None:
        """Materialise the version and start a vLLM server on it (the way `command` starts the base's)."""
        config = self.config
        try:
            entry.folder = Path(loader.materialise())
            server = ManagedServer(config.full_command, entry.folder, host=config.host, args=config.args,
                                   env=config.env, log_dir=self.log_dir, lora=False)
            entry.server = server
            server.start(config.start_timeout)
            if entry.removed:  # unloaded while it started: nobody needs it any more
                server.stop()
                return
            pool = EndpointPool([server.url], self.client, config.retry_dead,
                                hint=f"the server Personae started for {vllm_ref(entry.label)} stopped (see "
                                     f"{server.log_path}); restart Personae to start it again")
            if not pool.probe(pool.endpoints[0]):
                raise RuntimeError(f"the vLLM server started on it ({server.url}) does not list its model")
            entry.pool = pool
            log.info("%s is served by its own vLLM server %s (on %s)", entry.label, server.url, entry.folder)
        except Exception as error:  # noqa: BLE001 - any failure: the local generator answers, with the reason
            if entry.server is not None:
                entry.server.stop()
            self._fail(entry, loader, f"full_command: {error}")
        finally:
            entry.ready.set()

    def _fail(self, entry: FullEndpoint, loader, reason: str) -> None:
        entry.fallback = reason
        log.error("%s cannot be served by a vLLM endpoint of its own (%s)", entry.label, reason)
        try:
            if not entry.removed:  # local first, then forget the endpoint: no request finds neither
                self.fall_back(entry.label, reason, loader)
        finally:
            with self._lock:
                self.versions.pop(entry.label, None)

    def get(self, label: str) -> FullEndpoint | None:
        return self.versions.get(label)

    def remove(self, label: str) -> None:
        """Forget a version; a server started for it stops (in the background: it takes seconds)."""
        with self._lock:
            entry = self.versions.pop(label, None)
        if entry is None:
            return
        entry.removed = True
        if entry.server is not None and entry.ready.is_set():
            threading.Thread(target=entry.server.stop, daemon=True, name=f"vllm-full-stop-{label}").start()

    def close(self) -> None:
        """Stop every server started for a full version."""
        with self._lock:
            entries, self.versions = list(self.versions.values()), {}
        for entry in entries:
            entry.removed = True
            if entry.server is not None:
                entry.server.stop()

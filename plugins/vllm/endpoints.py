"""vLLM endpoints: which are alive, which adapters each holds, and the least busy one to send a request to."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import httpx

from runtime.errors import PersonaeError

log = logging.getLogger("personae.vllm")


class BackendUnavailable(PersonaeError):
    """No vLLM server can answer now (unreachable, or went away mid-reply)."""

    exit_code = 3
    http_status = 503
    code = "service_unavailable"


@dataclass
class Endpoint:
    """One vLLM OpenAI-compatible server."""

    url: str
    model: str = ""  # the base model's name there (from /v1/models)
    root: str = ""  # the folder it loaded the model from (vLLM's `root`)
    alive: bool = False
    outstanding: int = 0  # requests sent and not finished
    dead_since: float = 0.0
    adapters: set = field(default_factory=set)  # LoRA names loaded there
    error: str = ""  # why it was taken out last


class EndpointPool:
    """Every endpoint, least outstanding requests first; a dead one is skipped, probed again after a while."""

    def __init__(self, urls: list[str], client: httpx.Client, retry_dead: float = 5.0,
                 hint: str = "start it, or fix [plugins.vllm] urls"):
        self.endpoints = [Endpoint(url) for url in urls]
        self.client, self.retry_dead, self.hint = client, retry_dead, hint
        self._lock = threading.Lock()

    def probe(self, endpoint: Endpoint) -> bool:
        """Ask /v1/models whether the endpoint serves; learn its base model's name (its adapters are gone if it restarted)."""
        try:
            answer = self.client.get(endpoint.url + "/v1/models", timeout=5)
            answer.raise_for_status()
            models = answer.json()["data"]
        except (httpx.HTTPError, ValueError, KeyError) as error:
            self.mark_dead(endpoint, error)
            return False
        roots = [m["id"] for m in models if not m.get("parent")]
        with self._lock:
            endpoint.model = roots[0] if roots else models[0]["id"]
            endpoint.root = next((m.get("root") or "" for m in models if m["id"] == endpoint.model), "")
            endpoint.adapters = {m["id"] for m in models if m.get("parent")}
            if not endpoint.alive:
                log.info("vLLM endpoint %s serves %s", endpoint.url, endpoint.model)
            endpoint.alive = True
        return True

    def mark_dead(self, endpoint: Endpoint, error) -> None:
        """Take an endpoint out until it answers again."""
        with self._lock:
            if endpoint.alive or not endpoint.dead_since:
                log.error("vLLM endpoint %s taken out: %s", endpoint.url, describe(error))
            endpoint.alive = False
            endpoint.error = describe(error)
            endpoint.dead_since = time.monotonic()
            endpoint.adapters = set()

    def candidates(self) -> list[Endpoint]:
        """Endpoints to try for a request, least outstanding first (dead ones whose wait is over are probed)."""
        now = time.monotonic()
        for endpoint in self.endpoints:
            if not endpoint.alive and now - endpoint.dead_since >= self.retry_dead:
                self.probe(endpoint)
        with self._lock:
            return sorted((e for e in self.endpoints if e.alive), key=lambda e: e.outstanding)

    def acquire(self, endpoint: Endpoint) -> None:
        with self._lock:
            endpoint.outstanding += 1

    def release(self, endpoint: Endpoint) -> None:
        with self._lock:
            endpoint.outstanding -= 1

    def unavailable(self) -> BackendUnavailable:
        """The one-line error when no endpoint answers."""
        urls = ", ".join(e.url for e in self.endpoints)
        return BackendUnavailable(f"no vLLM server answers ({urls}); {self.hint} "
                                  f"(dead endpoints are tried again every {self.retry_dead:g} s)")


def describe(error) -> str:
    """A short reason for a connection problem."""
    if isinstance(error, httpx.ConnectError):
        return "connection refused or host unreachable"
    if isinstance(error, httpx.TimeoutException):
        return "timed out"
    if isinstance(error, httpx.HTTPStatusError):
        return f"HTTP {error.response.status_code}"
    return f"{type(error).__name__}: {error}"

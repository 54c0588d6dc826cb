"""How many requests the server works on at once ([plugins.http] max_concurrent_requests); the rest are told
to come back, with a 503 and Retry-After, never dropped."""

from __future__ import annotations

from plugins.http.errors import APIError, refuse

# Not counted: probes must answer while the server is full (the handler is async and cheap).
UNCOUNTED = frozenset({"/healthz"})
RETRY_AFTER_SECONDS = 2  # a request finishes in seconds; retrying sooner would only meet the same refusal


class Admission:
    """ASGI middleware: at most `limit` requests in progress (a stream counts until its last byte)."""

    def __init__(self, app, limit: int, refusals=None):
        self.app, self.limit, self.refusals = app, limit, refusals
        self.in_progress = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") in UNCOUNTED:
            return await self.app(scope, receive, send)
        if self.in_progress >= self.limit:
            error = APIError(503, f"the server is working on {self.in_progress} requests, its limit "
                                  f"([plugins.http] max_concurrent_requests); retry in {RETRY_AFTER_SECONDS} s",
                             type="server_error", code="server_busy",
                             headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
            if self.refusals is not None:  # counted in memory; written to the log once a second
                self.refusals.record(503, error.code, scope.get("path", ""))
            return await refuse(scope, receive, send, error)
        # One event loop: the check above and this increment cannot interleave with another request's.
        self.in_progress += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_progress -= 1

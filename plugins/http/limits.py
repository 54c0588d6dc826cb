"""Request limits of the HTTP API ([plugins.http] max_body_bytes, max_header_seconds, max_body_seconds,
max_messages, max_message_chars, max_concurrent_requests)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from plugins.http.errors import APIError, refuse

DEFAULT_MAX_BODY_BYTES = 1_048_576  # 1 MiB: a long chat of short messages, never a 10 MB paste
# A body sent a byte at a time holds a request slot while it lasts: 256 such clients would refuse everyone
# else (tests/test_slowloris.py). Past this the request gets a 408 and its connection is closed.
DEFAULT_MAX_BODY_SECONDS = 30
# Headers still incomplete after this close the connection (plugins/http/deadline.py): slowloris sockets.
DEFAULT_MAX_HEADER_SECONDS = 10
DEFAULT_MAX_MESSAGES = 500
DEFAULT_MAX_MESSAGE_CHARS = 32_000
# Requests in progress at once (streams included): past it, a 503 with Retry-After. With the body limit it
# bounds what requests may hold in memory (256 x 1 MiB); the generator's own queue admits fewer still.
DEFAULT_MAX_CONCURRENT_REQUESTS = 256
SEED_LIMIT = 2**63  # the generator seeds torch with a signed 64-bit integer
ID_LIMIT = 2**63  # SQLite's integers are signed 64-bit


@dataclass(frozen=True)
class Limits:
    """How much one request may carry; each is settable under [plugins.http]."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_body_seconds: int = DEFAULT_MAX_BODY_SECONDS
    max_header_seconds: int = DEFAULT_MAX_HEADER_SECONDS
    max_messages: int = DEFAULT_MAX_MESSAGES
    max_message_chars: int = DEFAULT_MAX_MESSAGE_CHARS
    max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT_REQUESTS

    @classmethod
    def of(cls, table: dict) -> Limits:
        """The limits of a [plugins.http] table; a value that is not a positive whole number is a config error."""
        from runtime.config import ConfigError

        values = {}
        for name in ("max_body_bytes", "max_body_seconds", "max_header_seconds", "max_messages",
                     "max_message_chars", "max_concurrent_requests"):
            value = table.get(name, getattr(cls, name))
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"[plugins.http] {name} must be a positive whole number, got {value!r}")
            values[name] = value
        return cls(**values)

    def check_messages(self, messages) -> None:
        """A 400 naming the limit when a request has too many or too long messages."""
        if len(messages) > self.max_messages:
            raise APIError(400, f"{len(messages)} messages is more than the limit of {self.max_messages} "
                                f"([plugins.http] max_messages); send fewer (older ones are trimmed anyway)",
                           param="messages", code="too_many_messages")
        for i, message in enumerate(messages):
            size = len(message.text())
            if size > self.max_message_chars:
                raise APIError(400, f"message {i} has {size} characters, more than the limit of "
                                    f"{self.max_message_chars} ([plugins.http] max_message_chars); shorten it",
                               param=f"messages.{i}.content", code="message_too_long")


class BodyLimit:
    """ASGI middleware: a 413 naming the limit for bodies over `limit` bytes, declared or streamed; a 408 for
    bodies still arriving after `seconds`."""

    def __init__(self, app, limit: int, seconds: float = DEFAULT_MAX_BODY_SECONDS):
        self.app, self.limit, self.seconds = app, limit, seconds

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await refuse(scope, receive, send, self.too_large())
        # Chunked or lying clients: read the body here, at most limit + 1 bytes, then replay it.
        chunks, size, more = [], 0, True
        deadline = asyncio.get_running_loop().time() + self.seconds
        while more:
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                return await refuse(scope, None, send, self.too_slow())
            if message["type"] != "http.request":
                return await self.app(scope, _replay([], message, receive), send)
            body = message.get("body", b"")
            size += len(body)
            more = message.get("more_body", False)
            if size > self.limit:
                return await refuse(scope, receive if more else None, send, self.too_large())
            chunks.append(body)
        whole = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([whole], None, receive), send)

    def too_slow(self) -> APIError:
        # The rest of the body is never read: the connection closes after the answer.
        return APIError(408, f"the request body did not arrive within {self.seconds} s "
                             f"([plugins.http] max_body_seconds); send it at once", code="body_timeout",
                        headers={"Connection": "close"})

    def too_large(self) -> APIError:
        return APIError(413, f"the request body is larger than the limit of {self.limit} bytes "
                             f"([plugins.http] max_body_bytes); send less", code="body_too_large")


def _replay(messages: list, pending, receive):
    """A receive() that gives the buffered messages first, then the live ones (e.g. disconnects)."""
    queue = list(messages) + ([pending] if pending is not None else [])

    async def replayed():
        if queue:
            return queue.pop(0)
        return await receive()

    return replayed

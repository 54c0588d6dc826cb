"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}} with a status code."""

from __future__ import annotations

import json

from adapters.errors import RegistryError
from runtime.errors import Busy, NotFound, PersonaeError


class APIError(Exception):
    """An error the client should see, with its HTTP status."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    @classmethod
    def of(cls, error: PersonaeError) -> "APIError":
        """The API error for a runtime error the user can fix: its status, and Retry-After when busy."""
        if isinstance(error, Busy):
            return cls(error.http_status, str(error), type="rate_limit_error", code="server_busy",
                       headers={"Retry-After": str(error.retry_after)})
        if isinstance(error, RegistryError):  # a pinned version that is missing or cannot be served
            return cls(404, str(error), param="model", code="model_not_found")
        param = "model" if isinstance(error, NotFound) else "messages"
        return cls(error.http_status, str(error).strip("'\""), param=param, code=error.code)

    def body(self) -> dict:
        """The JSON body OpenAI clients parse."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def validation_error(errors: list[dict]) -> APIError:
    """A 400 naming the first problem of a request body pydantic refused."""
    first = errors[0] if errors else {}
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    if first.get("type") == "json_invalid":
        return APIError(400, "the request body is not valid JSON: " + first.get("msg", ""), code="invalid_json")
    message = first.get("msg", "invalid request")
    where = f"'{param}': " if param else ""
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return APIError(400, f"{where}{message}{more}", param=param, code="invalid_value")


# A refused request's body is read and thrown away up to this size before the answer goes out: closing a
# socket with unread data makes the kernel send a reset, and the client never sees the answer. Past it the
# connection is closed at once (a reset is then possible, for a client sending far more than any limit).
DRAIN_BYTES = 16 << 20


async def refuse(scope, receive, send, error: APIError) -> None:
    """Answer an ASGI request with an error before the app sees it, reading its body first (bounded).

    `receive` None: the body was read to its end already.
    """
    declared = dict(scope.get("headers") or ()).get(b"content-length")
    drained = not (declared is not None and declared.isdigit() and int(declared) > DRAIN_BYTES)
    size, more = 0, drained and receive is not None
    while more:
        message = await receive()
        if message["type"] != "http.request":  # the client left
            return
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
        if size > DRAIN_BYTES:
            drained = more = False
    payload = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    headers += [(name.lower().encode("latin-1"), str(value).encode("latin-1")) for name, value in error.headers.items()]
    if not drained:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})

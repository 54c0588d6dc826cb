"""Bearer API keys: which ones are valid, and when the server may not start without them."""

from __future__ import annotations

import hmac
import ipaddress
import os

from plugins.http.errors import APIError, refuse
from runtime.errors import PersonaeError

KEYS_VARIABLE = "PERSONAE_API_KEYS"
DEFAULT_LISTEN = "127.0.0.1:8000"


class ListenError(PersonaeError, ValueError):
    """A --http HOST:PORT that cannot be used; the message says why and what to do."""


def api_keys(environ=None) -> list[str]:
    """The API keys of $PERSONAE_API_KEYS (comma separated, blanks ignored)."""
    raw = (environ if environ is not None else os.environ).get(KEYS_VARIABLE, "")
    return [key.strip() for key in raw.split(",") if key.strip()]


def parse_listen(value: str | None) -> tuple[str, int]:
    """Split HOST:PORT (IPv6 as [::1]:8000); a bare port means 127.0.0.1."""
    value = (value or DEFAULT_LISTEN).strip()
    if value.isdigit():
        value = f"127.0.0.1:{value}"
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ListenError(f"--http {value!r} is not HOST:PORT (e.g. 127.0.0.1:8000)")
    host = host.strip("[]")
    try:
        number = int(port)
    except ValueError:
        raise ListenError(f"--http {value!r}: port {port!r} is not a number (e.g. 127.0.0.1:8000)") from None
    if not 0 <= number <= 65535:
        raise ListenError(f"--http {value!r}: port {number} is out of range 0-65535")
    return host, number


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach HOST (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost may resolve to anything
        return False


def listen_problems(host: str, keys: list[str]) -> list[str]:
    """Why the server must not listen on HOST with these keys (empty when it may)."""
    if is_loopback(host) or keys:
        return []
    return [
        f"refusing to listen on {host} without API keys: anyone who can reach it could use the characters; "
        f"set {KEYS_VARIABLE}=key1,key2 (clients send 'Authorization: Bearer KEY'), or listen on 127.0.0.1"
    ]


def authorised(header: str | None, keys: list[str]) -> bool:
    """Whether an Authorization header carries one of the keys (always true when there are none)."""
    if not keys:
        return True
    if not header or not header.lower().startswith("bearer "):
        return False
    given = header[7:].strip().encode()
    # Constant-time comparison against every key (no early exit): no timing hint about how much of a key
    # matched, nor which key it was.
    matches = [hmac.compare_digest(given, key.encode()) for key in keys]
    return any(matches)


# Reachable without a key: probes, and the chat page's own files (a browser cannot send a key when it opens a
# page; the page asks for the key and sends it with every request for data, and holds none itself). Every other
# path needs a key: the API's description (/openapi.json, /docs, /redoc) too, and any route added later.
PUBLIC_PATHS = frozenset({"/healthz", "/"})
PUBLIC_PREFIXES = ("/static/",)
REFUSAL = ("a valid API key is required: send 'Authorization: Bearer KEY' with a key from " + KEYS_VARIABLE)


def is_public(path: str) -> bool:
    """Whether a request path is served without a key."""
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


class KeyCheck:
    """ASGI middleware: a 401 for every non-public path without a valid key, before the body is parsed."""

    def __init__(self, app, keys: list[str]):
        self.app, self.keys = app, list(keys)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.keys or is_public(scope.get("path", "")) \
                or scope.get("method") == "OPTIONS":  # CORS preflights carry no key by design
            return await self.app(scope, receive, send)
        header = dict(scope.get("headers") or ()).get(b"authorization")
        if authorised(header.decode("latin-1") if header is not None else None, self.keys):
            return await self.app(scope, receive, send)
        # Its body is read and thrown away unparsed (up to errors.DRAIN_BYTES, then the connection closes).
        await refuse(scope, receive, send, APIError(401, REFUSAL, code="invalid_api_key",
                                                    headers={"WWW-Authenticate": "Bearer"}))

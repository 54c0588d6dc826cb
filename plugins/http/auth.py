"""Bearer API keys: which ones are valid, and when the server may not start without them."""

from __future__ import annotations

import hmac
import ipaddress
import os

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
    # Constant-time comparison: no timing hint about how much of a key matched.
    return any(hmac.compare_digest(given, key.encode()) for key in keys)

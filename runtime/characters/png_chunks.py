"""PNG files as chunks: read, drop and add text chunks without re-encoding, so nothing else is lost."""

from __future__ import annotations

import struct
import zlib

from runtime.errors import PersonaeError

SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEXT_TYPES = (b"tEXt", b"iTXt", b"zTXt")
CARD_KEYS = ("chara", "ccv3")
# A PNG chunk may be up to 2**31-1 bytes; refuse absurd ones instead of reading them.
MAX_CHUNK = 2 ** 31 - 1


class NotPng(PersonaeError, ValueError):
    """Bytes that are not a well-formed PNG chunk stream (callers fall back to Pillow, which says why)."""


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, body) for every chunk, checking the signature, lengths and CRCs."""
    if not data.startswith(SIGNATURE):
        raise NotPng("no PNG signature")
    out, at = [], len(SIGNATURE)
    while at < len(data):
        if at + 8 > len(data):
            raise NotPng(f"truncated chunk header at byte {at}")
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        end = at + 8 + length
        if length > MAX_CHUNK or end + 4 > len(data):
            raise NotPng(f"chunk {kind!r} at byte {at} runs past the end of the file")
        body = data[at + 8:end]
        if struct.unpack(">I", data[end:end + 4])[0] != zlib.crc32(kind + body):
            raise NotPng(f"chunk {kind!r} at byte {at} has a bad CRC")
        out.append((kind, body))
        at = end + 4
        if kind == b"IEND":
            break
    if not out or out[-1][0] != b"IEND":
        raise NotPng("no IEND chunk")
    return out


def build(parts: list[tuple[bytes, bytes]]) -> bytes:
    """Chunks back into PNG bytes."""
    out = [SIGNATURE]
    for kind, body in parts:
        out.append(struct.pack(">I4s", len(body), kind) + body + struct.pack(">I", zlib.crc32(kind + body)))
    return b"".join(out)


def keyword(kind: bytes, body: bytes) -> str | None:
    """The keyword of a text chunk (tEXt, iTXt, zTXt), else None."""
    if kind not in TEXT_TYPES:
        return None
    return body.split(b"\0", 1)[0].decode("latin-1")


def card_texts(data: bytes) -> dict[str, str]:
    """The card text chunks as written ('chara', 'ccv3' tEXt, lower-cased keys), verbatim."""
    found = {}
    for kind, body in chunks(data):
        key = keyword(kind, body)
        if kind == b"tEXt" and key and key.lower() in CARD_KEYS:
            found[key.lower()] = body.split(b"\0", 1)[1].decode("latin-1")
    return found


def without_cards(data: bytes) -> bytes:
    """The same PNG minus its card chunks; every other chunk (metadata, colour profile...) kept as is."""
    return build([(k, b) for k, b in chunks(data) if (keyword(k, b) or "").lower() not in CARD_KEYS])


def with_texts(data: bytes, texts: list[tuple[str, str]]) -> bytes:
    """The PNG with its card chunks replaced by these tEXt chunks, written just before IEND."""
    kept = [(k, b) for k, b in chunks(data) if (keyword(k, b) or "").lower() not in CARD_KEYS]
    added = [(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1")) for key, value in texts]
    return build(kept[:-1] + added + kept[-1:])

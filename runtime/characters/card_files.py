"""Character Card files in and out: JSON and PNG (tEXt chunks 'ccv3' / 'chara'), and a placeholder avatar."""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import io
import json
import os
import re
import secrets
import warnings
from pathlib import Path

from runtime.characters import png_chunks
from runtime.characters import limits
from runtime.characters.card import (
    PNG_SIGNATURE,
    SPEC_VERSIONS,
    SPECS,
    V1,
    V1_FIELDS,
    V2,
    V2_FIELDS,
    V3,
    V3_ONLY_FIELDS,
    CardError,
    Character,
    parse_card,
)

# --- Reading -----------------------------------------------------------------------------


def load_card(path) -> Character:
    """Read a card file; JSON or PNG is told by content, not by suffix."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > limits.MAX_CARD_FILE_BYTES:
            raise CardError(path, "file", f"is {size} bytes, more than the limit of {limits.MAX_CARD_FILE_BYTES} "
                                          "— this is not a character card")
        data = path.read_bytes()
    except OSError as error:
        raise CardError(path, "file", f"cannot be read ({error.strerror}) — check the path") from None
    if data.startswith(PNG_SIGNATURE):
        character = parse_card(read_png_card(data, source=str(path)), source=str(path))
        try:  # chunk by chunk, so the image's other metadata survives a round trip
            character.avatar_png = png_chunks.without_cards(data)
            character.carried["png_texts"] = png_chunks.card_texts(data)
        except png_chunks.NotPng:
            character.avatar_png = _strip_png_text(data)
        return character
    if data.startswith(b"PK\x03\x04"):
        from runtime.characters.charx import read_charx

        return read_charx(data, source=str(path))
    if data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
        try:
            card = limits.loads(data.decode("utf-8-sig"))
        except (UnicodeDecodeError, ValueError) as error:  # JSONDecodeError and JSONProblem are ValueErrors
            problem = f"not valid JSON ({error}) — fix the file or export the card again"
            raise CardError(path, "file", problem) from None
        return parse_card(card, source=str(path))
    raise CardError(path, "file", "neither a JSON nor a PNG character card — "
                                  "use a card exported as .json, .png or .charx")


def read_png_card(data: bytes, source: str = "") -> dict:
    """The card dict embedded in a PNG: the 'ccv3' tEXt chunk if present, else 'chara'."""
    from PIL import Image

    source = source or "<png>"
    try:
        with warnings.catch_warnings():
            # Pillow only warns of images over 89 megapixels; _check_avatar_size refuses them.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data))
        with opened as image:
            if image.format != "PNG":
                raise CardError(source, "file", f"is {image.format}, not PNG — export the card as .png")
            _check_avatar_size(image, source)
            # The first chunk of each name wins, as in SillyTavern (Pillow keeps the last one).
            chunks = {key.lower(): value for key, value in image.text.items()}  # .text reads all chunks
            chunks.update(first_text_chunks(data))
    except CardError:
        raise
    except Exception as error:  # Pillow raises many kinds for damaged files
        raise CardError(source, "file", f"not a readable PNG ({error}) — export the card again") from None
    for key in ("ccv3", "chara"):
        if key in chunks:
            break
    else:
        raise CardError(source, "png:chara", "missing — this PNG has no character card in it; "
                                             "export the card from a card editor, or use its .json")
    try:
        raw = base64.b64decode("".join(chunks[key].split()), validate=True)
    except (binascii.Error, ValueError):
        raise CardError(source, f"png:{key}", "not valid base64 — export the card again") from None
    try:
        card = limits.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as error:
        raise CardError(source, f"png:{key}", f"not valid JSON ({error}) — export the card again") from None
    if not isinstance(card, dict):
        raise CardError(source, f"png:{key}", "is not a JSON object — export the card again")
    return card


def first_text_chunks(data: bytes) -> dict[str, str]:
    """Each tEXt chunk's keyword (lowercased) -> text, the first of each name only."""
    found: dict[str, str] = {}
    position = len(PNG_SIGNATURE)
    while position + 8 <= len(data):
        length = int.from_bytes(data[position:position + 4], "big")
        kind = data[position + 4:position + 8]
        body = data[position + 8:position + 8 + length]
        if kind == b"IEND" or len(body) < length:
            break
        if kind == b"tEXt" and b"\x00" in body:
            keyword, _, text = body.partition(b"\x00")
            found.setdefault(keyword.decode("latin-1").lower(), text.decode("latin-1"))
        position += 12 + length  # length, type, data, CRC
    return found


def _check_avatar_size(image, source) -> None:
    """Refuse images too large to decode safely (decompression bombs), before decoding them."""
    width, height = image.size
    if width * height > limits.MAX_AVATAR_PIXELS:
        raise CardError(source, "avatar", f"is {width}x{height} pixels, more than the limit of "
                                          f"{limits.MAX_AVATAR_PIXELS} pixels — use a smaller image")


def _strip_png_text(data: bytes) -> bytes:
    """The avatar image re-encoded without the card chunks, at most AVATAR_SIDE pixels a side."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if max(image.size) > limits.AVATAR_SIDE:
            image = _downscaled(image)
        out = io.BytesIO()
        image.save(out, format="PNG")
    return out.getvalue()


def _downscaled(image):
    """A copy at most AVATAR_SIDE pixels a side (aspect kept)."""
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert("RGBA")
    image = image.copy()
    image.thumbnail((limits.AVATAR_SIDE, limits.AVATAR_SIDE))
    return image


def shrunk_card_png(data: bytes) -> bytes | None:
    """A PNG card with its avatar downscaled to AVATAR_SIDE and its card chunks kept, or None if small enough."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    with Image.open(io.BytesIO(data)) as image:
        if max(image.size) <= limits.AVATAR_SIDE:
            return None
        image.load()
        small = _downscaled(image)
    info = PngInfo()
    for key, text in first_text_chunks(data).items():
        if key in ("ccv3", "chara"):
            info.add_text(key, text)
    out = io.BytesIO()
    small.save(out, format="PNG", pnginfo=info)
    return out.getvalue()


# --- Writing -----------------------------------------------------------------------------


def card_dict(character: Character, spec: str | None = None) -> dict:
    """The character as a card dict; same spec as read is lossless, other specs convert."""
    spec = spec or character.spec
    if spec not in SPECS:
        raise ValueError(f"unknown card spec {spec!r}; use one of {', '.join(SPECS)}")
    if character.raw and spec == character.spec:
        return _update_in_place(character, spec)
    # A new card or a conversion: every field of the target spec, plus the unknown keys we carry.
    values = {key: copy.deepcopy(getattr(character, key)) for key in (V1_FIELDS if spec == V1 else V2_FIELDS)}
    if "character_book" in values and values["character_book"] is None:
        del values["character_book"]  # optional in the spec: absent rather than null
    raw = character.raw
    if character.spec == V1:
        old_data, top = {}, {k: v for k, v in raw.items() if k not in V2_FIELDS}
    else:
        old_data = raw.get("data") or {}
        top = {k: v for k, v in raw.items() if k not in ("spec", "spec_version", "data")}
    top = copy.deepcopy(top)
    if spec == V1:
        return {**values, **{k: v for k, v in top.items() if k not in V1_FIELDS}}
    # V2 has no place for V3's own fields; V3 keeps every unknown key.
    dropped = V2_FIELDS + (V3_ONLY_FIELDS if spec == V2 else ())
    data = {**values, **{k: copy.deepcopy(v) for k, v in old_data.items() if k not in dropped}}
    if spec == V3:
        data.setdefault("group_only_greetings", [])  # required by V3
    out = {"spec": spec, "spec_version": SPEC_VERSIONS[spec], "data": data}
    for key, value in top.items():
        # Some tools repeat the V1 fields at the top of V2 cards; keep them, but current.
        out[key] = values[key] if key in V1_FIELDS else value
    return out


def _update_in_place(character: Character, spec: str) -> dict:
    """The original dict with only the fields changed since reading written back."""
    out = copy.deepcopy(character.raw)
    data = out if spec == V1 else out["data"]
    # A V1 dict may carry some V2 fields at the top; they are read, so they are written too.
    fields = V2_FIELDS if spec != V1 else V1_FIELDS + tuple(k for k in V2_FIELDS if k in data)
    for key in dict.fromkeys(fields):
        current = getattr(character, key)
        if key in data and _normalised(key, data[key]) == current:
            continue  # unchanged: keep the original spelling (null, missing vs empty...)
        if key not in data and current == _normalised(key, None):
            continue
        data[key] = copy.deepcopy(current)
        if spec != V1 and key in V1_FIELDS and key in out:
            out[key] = copy.deepcopy(current)  # keep a top-level V1 duplicate in step
    return out


def _normalised(key: str, value):
    """How parse_card reads a field value, to tell edits from the original's spelling."""
    if key in ("alternate_greetings", "tags"):
        return list(value or [])
    if key == "extensions":
        return value or {}
    if key == "character_book":
        return value
    return value or ""


def save_card(character: Character, path) -> None:
    """Write a card as .json, or as .png with the card in 'ccv3' (V3) and 'chara' (V2) chunks."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        payload = (json.dumps(card_dict(character), indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    elif suffix == ".charx":
        from runtime.characters.charx import charx_bytes

        payload = charx_bytes(card_dict(character, V3), character)
    elif suffix == ".png":
        try:
            payload = _card_png(character)
        except Exception as error:  # a bad avatar_png: Pillow raises many kinds
            raise CardError(path, "avatar_png", f"not a readable image ({error}) — "
                                                "set avatar_png to PNG bytes, or None for a placeholder") from None
    else:
        raise CardError(path, "file", f"unsupported suffix {path.suffix!r} — save as .json, .png or .charx")
    # Write beside and rename, so a crash never leaves half a card where a good one was.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        # os.open with 0o666 lets the umask decide the mode, as for any ordinary file.
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _card_png(character: Character) -> bytes:
    """The avatar (or a placeholder) as PNG bytes with the card embedded."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    def encode(card: dict) -> str:
        return base64.b64encode(json.dumps(card, ensure_ascii=False).encode("utf-8")).decode("ascii")

    # Readers prefer ccv3; chara is the V2 fallback older apps understand. An unchanged card keeps the
    # chunks it was read with, even a 'chara' that disagrees with its 'ccv3' (V2-only apps keep seeing it).
    texts = {"ccv3": encode(card_dict(character, V3)), "chara": encode(card_dict(character, V2))}
    if character.raw and card_dict(character) == character.raw:
        texts.update(character.carried.get("png_texts") or {})
    avatar = character.avatar_png or placeholder_avatar(character.name)
    try:
        return png_chunks.with_texts(avatar, [("ccv3", texts["ccv3"]), ("chara", texts["chara"])])
    except png_chunks.NotPng:
        pass  # another image format, or a damaged PNG: Pillow re-encodes (or says what is wrong)
    info = PngInfo()
    info.add_text("ccv3", texts["ccv3"])
    info.add_text("chara", texts["chara"])
    with Image.open(io.BytesIO(avatar)) as image:
        image.load()
        if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"):
            image = image.convert("RGBA")
        out = io.BytesIO()
        image.save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def placeholder_avatar(name: str, size: int = 256) -> bytes:
    """A plain avatar (colour from the name, initials) for characters without an image."""
    from PIL import Image, ImageDraw, ImageFont

    digest = hashlib.sha1(name.encode()).digest()
    colour = tuple(64 + b % 128 for b in digest[:3])
    image = Image.new("RGB", (size, size), colour)
    draw = ImageDraw.Draw(image)
    initials = "".join(w[0] for w in re.findall(r"\w+", name)[:2]).upper() or "?"
    font = ImageFont.load_default(size=size // 3)
    draw.text((size / 2, size / 2), initials, fill="white", font=font, anchor="mm")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()

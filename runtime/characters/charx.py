"""`.charx` files (Character Card V3's zip: card.json at the root, assets beside it) in and out."""

from __future__ import annotations

import io
import json
import zipfile

from runtime.characters import png_chunks
from runtime.characters.card import V3, CardError, Character, parse_card

# A card archive holding more than this is refused before it is unpacked (zip bombs).
MAX_MEMBERS = 2000
MAX_TOTAL_BYTES = 512 * 1024 * 1024
MAX_CARD_JSON_BYTES = 32 * 1024 * 1024
EMBEDDED = ("embeded://", "embedded://")  # the spec's own spelling first; the correct one is seen too


def read_charx(data: bytes, source: str = "") -> Character:
    """A .charx archive -> Character, with its icon as the avatar and every other file carried along."""
    source = source or "<charx>"
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [m for m in archive.infolist() if not m.is_dir()]
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise CardError(source, "file", f"not a readable .charx zip ({error}) — export the card again") from None
    if len(members) > MAX_MEMBERS or sum(m.file_size for m in members) > MAX_TOTAL_BYTES:
        raise CardError(source, "file", f"holds more than {MAX_MEMBERS} files or {MAX_TOTAL_BYTES >> 20} MiB "
                                        "unpacked — too large for a character card")
    names = {m.filename: m for m in members}
    if "card.json" not in names:
        raise CardError(source, "card.json", "missing — a .charx must have card.json at its root")
    if names["card.json"].file_size > MAX_CARD_JSON_BYTES:
        raise CardError(source, "card.json", f"over {MAX_CARD_JSON_BYTES >> 20} MiB — too large for a card")
    try:
        files = {name: archive.read(member) for name, member in names.items()}
        card = json.loads(files.pop("card.json").decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CardError(source, "card.json", f"not valid JSON ({error}) — export the card again") from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise CardError(source, "file", f"a file in the zip cannot be read ({error}) — export it again") from None
    character = parse_card(card, source=source)
    character.carried["charx_files"] = files
    icon = _icon(card, files)
    if icon is not None:
        character.avatar_png = _as_png(icon)
    return character


def _icon(card: dict, files: dict[str, bytes]) -> bytes | None:
    """The bytes of the card's main icon asset, if it is inside the archive."""
    assets = (card.get("data") or {}).get("assets") if isinstance(card.get("data"), dict) else None
    icons = [a for a in assets or [] if isinstance(a, dict) and a.get("type") == "icon"]
    icons.sort(key=lambda a: a.get("name") != "main")
    for asset in icons:
        uri = asset.get("uri") if isinstance(asset.get("uri"), str) else ""
        for prefix in EMBEDDED:
            if uri.startswith(prefix) and uri[len(prefix):] in files:
                return files[uri[len(prefix):]]
    return None


def _as_png(image: bytes) -> bytes | None:
    """PNG bytes for an icon (other formats converted); None if it is not an image."""
    try:
        return png_chunks.without_cards(image)
    except png_chunks.NotPng:
        pass
    from PIL import Image

    try:
        with Image.open(io.BytesIO(image)) as opened:
            out = io.BytesIO()
            opened.convert("RGBA").save(out, format="PNG")
            return out.getvalue()
    except Exception:  # Pillow raises many kinds; a broken icon must not stop the import
        return None


def charx_bytes(card: dict, character: Character) -> bytes:
    """A .charx archive: card.json (V3) plus every file the character was read with."""
    if card.get("spec") != V3:
        raise ValueError("a .charx holds a chara_card_v3 card")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("card.json", json.dumps(card, indent=2, ensure_ascii=False))
        for name, body in sorted((character.carried.get("charx_files") or {}).items()):
            archive.writestr(name, body)
    return out.getvalue()

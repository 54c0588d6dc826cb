"""SillyTavern world-info files (standalone lorebooks) read as character_book dicts and attached to characters."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from runtime.characters import lorebook
from runtime.characters.card import CardError, Character

# SillyTavern entry field -> character_book extension key, as SillyTavern itself exports them.
EXTENSION_FIELDS = {
    "position": "position", "excludeRecursion": "exclude_recursion", "displayIndex": "display_index",
    "probability": "probability", "useProbability": "useProbability", "depth": "depth",
    "selectiveLogic": "selectiveLogic", "group": "group", "groupOverride": "group_override",
    "groupWeight": "group_weight", "preventRecursion": "prevent_recursion",
    "delayUntilRecursion": "delay_until_recursion", "scanDepth": "scan_depth",
    "matchWholeWords": "match_whole_words", "useGroupScoring": "use_group_scoring",
    "caseSensitive": "case_sensitive", "automationId": "automation_id", "role": "role",
    "vectorized": "vectorized", "sticky": "sticky", "cooldown": "cooldown", "delay": "delay",
    "ignoreBudget": "ignore_budget", "outletName": "outlet_name", "triggers": "triggers",
}
# Fields the conversion maps to the card's own entry fields.
MAPPED = {"uid", "key", "keysecondary", "comment", "content", "constant", "selective", "order", "disable",
          "extensions"}


def load_world_info(path) -> dict:
    """A world-info file (SillyTavern's {"entries": {uid: ...}} or a character_book) -> character_book dict."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except OSError as error:
        raise CardError(path, "file", f"cannot be read ({error.strerror}) — check the path") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CardError(path, "file", f"not valid JSON ({error}) — export the lorebook again") from None
    return to_character_book(data, source=str(path), name=path.stem)


def to_character_book(data, source: str = "<lorebook>", name: str = "") -> dict:
    """SillyTavern world info (or a character_book, or a card's book) -> a validated character_book dict."""
    if not isinstance(data, dict):
        raise CardError(source, "(lorebook)", "is not a JSON object — a lorebook is {\"entries\": ...}")
    if isinstance(data.get("data"), dict) and "character_book" in data["data"]:
        data = data["data"]["character_book"] or {}  # a whole card: take its book
    entries = data.get("entries")
    if isinstance(entries, list):  # already a character_book
        book = copy.deepcopy(data)
    elif isinstance(entries, dict):
        book = {"name": data.get("name") or name, "entries": [
            _entry(entry, f"entries.{uid}", source) for uid, entry in entries.items()]}
        book["entries"].sort(key=lambda e: (_number(e["extensions"].get("display_index")), _number(e.get("id"))))
        for key in ("description", "scan_depth", "token_budget", "recursive_scanning", "extensions"):
            if key in data:
                book[key] = copy.deepcopy(data[key])
    else:
        raise CardError(source, "entries", "missing — not a SillyTavern world-info file or a lorebook "
                                           "(export it from SillyTavern's World Info panel)")
    # The same checks a card's own lorebook gets.
    from runtime.characters.card import _check_book

    return _check_book(book, source, "lorebook")


def _number(value) -> float:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def _entry(entry, where: str, source: str) -> dict:
    """One SillyTavern world-info entry -> a character_book entry (what SillyTavern writes into cards)."""
    if not isinstance(entry, dict):
        raise CardError(source, where, "must be an object — use {\"key\": [...], \"content\": \"...\"}")
    for field in ("key", "keysecondary"):
        value = entry.get(field)
        if value is not None and not (isinstance(value, list) and all(isinstance(k, str) for k in value)):
            raise CardError(source, f"{where}.{field}", "must be a list of strings — use [\"...\"]")
    position = entry.get("position", lorebook.BEFORE)
    extensions = copy.deepcopy(entry.get("extensions") or {})
    extensions.update({out: copy.deepcopy(entry[key]) for key, out in EXTENSION_FIELDS.items() if key in entry})
    # Fields SillyTavern may add later travel too, so a re-export loses nothing.
    extensions.update({f"st_{k}": copy.deepcopy(v) for k, v in entry.items()
                       if k not in MAPPED and k not in EXTENSION_FIELDS})
    uid = entry.get("uid")
    return {
        **({"id": uid} if isinstance(uid, int) and not isinstance(uid, bool) else {}),
        "keys": list(entry.get("key") or []), "secondary_keys": list(entry.get("keysecondary") or []),
        "comment": entry.get("comment") or "", "content": entry.get("content") or "",
        "constant": bool(entry.get("constant")), "selective": bool(entry.get("selective", True)),
        "insertion_order": entry.get("order", 100), "enabled": not entry.get("disable", False),
        "position": "before_char" if position == lorebook.BEFORE else "after_char",
        "use_regex": True, "extensions": extensions,
    }


def attach(character: Character, book: dict, replace: bool = False) -> list[str]:
    """Add a lorebook's entries to the character's own book (or replace it); returns warnings."""
    if replace or not character.character_book:
        character.character_book = copy.deepcopy(book)
    else:
        merged = character.character_book
        merged.setdefault("entries", [])
        ids = [e.get("id") for e in merged["entries"] if isinstance(e.get("id"), int)]
        next_id = max(ids, default=-1) + 1
        for entry in copy.deepcopy(book.get("entries") or []):
            entry["id"], next_id = next_id, next_id + 1
            merged["entries"].append(entry)
    if book.get("name"):
        # SillyTavern links a character to its world by name in extensions.world.
        character.extensions["world"] = book["name"]
    return lorebook.unsupported(book)


def attach_file(catalog, name: str, path, replace: bool = False) -> tuple[Character, list[str]]:
    """Attach a world-info file to a catalog character and save the card in the data directory."""
    from runtime.characters.card_files import save_card

    book = load_world_info(path)  # raises before anything changes
    character = catalog.get(name)
    warnings = attach(character, book, replace)
    source = Path(character.source) if character.source else None
    in_folder = source is not None and source.parent == catalog.folder
    target = source if in_folder else catalog.folder / f"{character.id}.json"
    save_card(character, target)
    catalog.reload()
    return catalog.get(character.id), warnings

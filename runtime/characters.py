"""Characters, and Character Card V1/V2/V3 files (JSON or PNG) in and out."""

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
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

V1, V2, V3 = "chara_card_v1", "chara_card_v2", "chara_card_v3"
SPECS = (V1, V2, V3)
SPEC_VERSIONS = {V2: "2.0", V3: "3.0"}

# Fields each spec defines, in the spec's own order (used for new cards and conversions).
V1_FIELDS = ("name", "description", "personality", "scenario", "first_mes", "mes_example")
V2_FIELDS = V1_FIELDS + (
    "creator_notes", "system_prompt", "post_history_instructions", "alternate_greetings",
    "character_book", "tags", "creator", "character_version", "extensions",
)
# V3-only fields are not modelled; they live in Character.raw and are dropped when writing V2.
V3_ONLY_FIELDS = (
    "assets", "nickname", "creator_notes_multilingual", "source",
    "group_only_greetings", "creation_date", "modification_date",
)
STRING_FIELDS = (
    "name", "description", "personality", "scenario", "first_mes", "mes_example",
    "creator_notes", "system_prompt", "post_history_instructions", "creator", "character_version",
)
LIST_FIELDS = ("alternate_greetings", "tags")
GENERATION_KEYS = ("temperature", "top_p", "repetition_penalty", "max_new_tokens", "stop")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

DEFAULT_INSTRUCTION = (
    "You are {{char}}. Stay in character: reply in {{char}}'s own voice, "
    "and never say that you are an AI, an assistant or a language model."
)

_MACRO = re.compile(r"(?i:\{\{\s*(char|user)\s*\}\})|<(BOT|USER)>")
_ORIGINAL = re.compile(r"\{\{\s*original\s*\}\}", re.IGNORECASE)
_START = re.compile(r"<START>", re.IGNORECASE)
_SPEAKER = re.compile(r"^\s*(?:(?i:\{\{\s*(user|char)\s*\}\})|<(USER|BOT)>)\s*:\s?(.*)$")


class CardError(ValueError):
    """A card file that cannot be imported; message names the file and the field."""

    def __init__(self, source, field: str, problem: str):
        self.source = str(source) if source else "<card>"
        self.field = field
        self.problem = " ".join(str(problem).split())  # one line, whatever the cause said
        super().__init__(f"{self.source}: field '{field}': {self.problem}")


@dataclass
class LoreEntry:
    """One lorebook entry: text added to the prompt when one of its keys comes up."""

    keys: list[str]
    content: str
    enabled: bool = True
    insertion_order: int = 0
    case_sensitive: bool = False
    constant: bool = False
    secondary_keys: list[str] = field(default_factory=list)
    selective: bool = False
    priority: int = 0
    name: str = ""
    extensions: dict = field(default_factory=dict)

    def matches(self, text: str) -> bool:
        """True if the entry fires for the text (constant entries always do)."""
        if not self.enabled:
            return False
        if self.constant:
            return True
        if not _any_key(self.keys, text, self.case_sensitive):
            return False
        if self.selective and self.secondary_keys:
            return _any_key(self.secondary_keys, text, self.case_sensitive)
        return True


def _any_key(keys: list[str], text: str, case_sensitive: bool) -> bool:
    """Whole-word match of any key, so 'sea' does not fire on 'research'."""
    flags = 0 if case_sensitive else re.IGNORECASE
    for key in keys:
        key = key.strip()
        if key and re.search(rf"(?<!\w){re.escape(key)}(?!\w)", text, flags):
            return True
    return False


@dataclass
class Character:
    """A persona card: what the prompt, the audits and the trainer know about a character."""

    name: str
    description: str = ""
    personality: str = ""
    scenario: str = ""
    first_mes: str = ""
    mes_example: str = ""
    system_prompt: str = ""
    post_history_instructions: str = ""
    alternate_greetings: list[str] = field(default_factory=list)
    creator_notes: str = ""  # for humans reading the card; never used in any prompt
    tags: list[str] = field(default_factory=list)
    creator: str = ""
    character_version: str = ""
    character_book: dict | None = None  # raw lorebook, verbatim, so round trips keep it all
    extensions: dict = field(default_factory=dict)
    avatar_png: bytes | None = field(default=None, repr=False)
    source: str = ""
    spec: str = V2
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def id(self) -> str:
        """Slug of the name ([a-z0-9-]); the key for this character everywhere."""
        ascii_name = unicodedata.normalize("NFKD", self.name).encode("ascii", "ignore").decode()
        slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")
        # Names with no latin letters still need a stable, unique key.
        return slug or "character-" + hashlib.sha1(self.name.encode()).hexdigest()[:8]

    @property
    def display_name(self) -> str:
        """What {{char}} becomes: the V3 nickname if the card has one, else the name."""
        nickname = self.raw.get("data", {}).get("nickname") if self.spec == V3 else None
        return nickname if isinstance(nickname, str) and nickname.strip() else self.name

    def render(self, text: str, user: str = "User") -> str:
        """Replace {{char}}, {{user}} (any case), <BOT> and <USER> in one pass."""
        names = {"char": self.display_name, "user": user, "bot": self.display_name}
        return _MACRO.sub(lambda m: names[(m.group(1) or m.group(2)).lower()], text or "")

    def system_text(self, user: str = "User") -> str:
        """The system message: instruction (card's system_prompt or the default) + persona."""
        instruction = self.system_prompt.strip()
        if instruction:
            # V2 spec: {{original}} stands for the frontend's own system prompt.
            instruction = _ORIGINAL.sub(lambda _: DEFAULT_INSTRUCTION, instruction)
        else:
            instruction = DEFAULT_INSTRUCTION
        parts = [instruction]
        if self.description.strip():
            parts.append(self.description.strip())
        if self.personality.strip():
            parts.append("{{char}}'s personality: " + self.personality.strip())
        if self.scenario.strip():
            parts.append("Scenario: " + self.scenario.strip())
        # creator_notes are deliberately absent: they are notes to humans, not to the model.
        return self.render("\n\n".join(parts), user)

    def example_dialogues(self, user: str = "User") -> list[list[dict]]:
        """mes_example as chat blocks: one list of role/content messages per <START> block."""
        names = {self.name.lower(): "assistant", self.display_name.lower(): "assistant"}
        names.setdefault(user.lower(), "user")
        blocks = []
        for chunk in _START.split(self.mes_example or ""):
            messages: list[dict] = []
            for line in chunk.splitlines():
                role, content = _speaker(line, names)
                if role is None:
                    if messages:  # a continuation line belongs to the message above
                        messages[-1]["content"] += "\n" + line
                    continue
                if messages and messages[-1]["role"] == role:
                    # Chat templates want alternating roles: fold repeated speakers together.
                    messages[-1]["content"] += "\n" + content
                else:
                    messages.append({"role": role, "content": content})
            for message in messages:
                message["content"] = self.render(message["content"].strip(), user)
            messages = [m for m in messages if m["content"]]
            if messages:
                blocks.append(messages)
        return blocks

    def greetings(self, user: str = "User") -> list[str]:
        """first_mes then alternate_greetings, rendered; empty ones skipped."""
        texts = [self.first_mes, *self.alternate_greetings]
        return [self.render(t, user).strip() for t in texts if t and t.strip()]

    def post_history(self, user: str = "User") -> str:
        """post_history_instructions, rendered (goes after the chat history)."""
        return self.render(self.post_history_instructions, user).strip()

    def lore_entries(self) -> list[LoreEntry]:
        """The lorebook's entries as LoreEntry objects."""
        book = self.character_book or {}
        return [_lore_entry(e) for e in book.get("entries") or [] if isinstance(e, dict)]

    def triggered_lore(self, texts: list[str]) -> list[LoreEntry]:
        """Entries fired by the recent texts (oldest first), highest priority first."""
        if isinstance(texts, str):
            texts = [texts]  # one text, not a list of characters
        book = self.character_book or {}
        depth = book.get("scan_depth")
        if isinstance(depth, int) and not isinstance(depth, bool) and depth >= 0:
            texts = texts[-depth:] if depth else []
        scanned = "\n".join(texts)
        fired = [e for e in self.lore_entries() if e.matches(scanned)]
        # Highest priority first so a prompt budget can cut from the end; then the card's order.
        return sorted(fired, key=lambda e: (-e.priority, e.insertion_order))

    def generation_settings(self) -> dict:
        """Sampling settings from extensions.personae.generation: GENERATION_KEYS only, stop as a list."""
        generation = (self.extensions.get("personae") or {}).get("generation") or {}
        settings = {k: copy.deepcopy(generation[k]) for k in GENERATION_KEYS if k in generation}
        if isinstance(settings.get("stop"), str):
            settings["stop"] = [settings["stop"]]  # cards may give one stop string; callers get a list
        return settings


def _speaker(line: str, names: dict) -> tuple[str | None, str]:
    """(role, text) if the line starts a message ('{{user}}:', '<BOT>:', 'Name:'), else (None, line)."""
    match = _SPEAKER.match(line)
    if match:
        who = (match.group(1) or match.group(2)).lower()
        return ("user" if who == "user" else "assistant"), match.group(3)
    head, sep, rest = line.partition(":")
    if sep and head.strip().lower() in names:
        return names[head.strip().lower()], rest.strip()
    return None, line


def _lore_entry(entry: dict) -> LoreEntry:
    """One character_book entry dict -> LoreEntry (missing fields take spec defaults)."""
    return LoreEntry(
        keys=[k for k in entry.get("keys") or [] if isinstance(k, str)],
        content=entry.get("content") or "",
        enabled=bool(entry.get("enabled", True)),
        insertion_order=_int(entry.get("insertion_order")),
        case_sensitive=bool(entry.get("case_sensitive") or False),
        constant=bool(entry.get("constant") or False),
        secondary_keys=[k for k in entry.get("secondary_keys") or [] if isinstance(k, str)],
        selective=bool(entry.get("selective") or False),
        priority=_int(entry.get("priority")),
        name=entry.get("name") or entry.get("comment") or "",
        extensions=copy.deepcopy(entry.get("extensions") or {}),
    )


def _int(value) -> int:
    """A number from a card, tolerating null and floats."""
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


# --- Reading -----------------------------------------------------------------------------


def load_card(path) -> Character:
    """Read a card file; JSON or PNG is told by content, not by suffix."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CardError(path, "file", f"cannot be read ({error.strerror}) — check the path") from None
    if data.startswith(PNG_SIGNATURE):
        character = parse_card(read_png_card(data, source=str(path)), source=str(path))
        character.avatar_png = _strip_png_text(data)
        return character
    if data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
        try:
            card = json.loads(data.decode("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            problem = f"not valid JSON ({error}) — fix the file or export the card again"
            raise CardError(path, "file", problem) from None
        return parse_card(card, source=str(path))
    raise CardError(path, "file", "neither a JSON nor a PNG character card — "
                                  "use a card exported as .json or .png")


def read_png_card(data: bytes, source: str = "") -> dict:
    """The card dict embedded in a PNG: the 'ccv3' tEXt chunk if present, else 'chara'."""
    from PIL import Image

    source = source or "<png>"
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "PNG":
                raise CardError(source, "file", f"is {image.format}, not PNG — export the card as .png")
            chunks = {key.lower(): value for key, value in image.text.items()}  # .text reads all chunks
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
        card = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CardError(source, f"png:{key}", f"not valid JSON ({error}) — export the card again") from None
    if not isinstance(card, dict):
        raise CardError(source, f"png:{key}", "is not a JSON object — export the card again")
    return card


def _strip_png_text(data: bytes) -> bytes:
    """The avatar image re-encoded without the card chunks, so stale cards don't travel with it."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        out = io.BytesIO()
        image.save(out, format="PNG")
    return out.getvalue()


def parse_card(data: dict, source: str = "") -> Character:
    """A card dict (V1 flat, V2 or V3) -> Character; CardError names the bad field."""
    source = source or "<card>"
    if not isinstance(data, dict):
        raise CardError(source, "(card)", f"is a JSON {_json_type(data)}, not an object — a card is a JSON object")
    spec = data.get("spec")
    if spec is None:
        spec, fields, prefix = V1, data, ""
    elif spec in (V2, V3):
        fields, prefix = data.get("data"), "data."
        if not isinstance(fields, dict):
            raise CardError(source, "data", f"missing or not an object — {spec} cards keep their fields under 'data'")
    else:
        raise CardError(source, "spec", f"unknown value {spec!r:.40} — use 'chara_card_v2' or "
                                        "'chara_card_v3', or remove it for a V1 card")

    name = fields.get("name")
    if name is not None and not isinstance(name, str):
        raise CardError(source, prefix + "name", f"must be text, got a {_json_type(name)} — put the name in quotes")
    if not name or not name.strip():
        problem = "missing" if name is None else "empty"
        raise CardError(source, prefix + "name", f"{problem} — every card needs a name")
    values = {key: _text(fields.get(key), source, prefix + key) for key in STRING_FIELDS}
    for key in LIST_FIELDS:
        values[key] = _string_list(fields.get(key), source, prefix + key)
    values["character_book"] = _check_book(fields.get("character_book"), source, prefix + "character_book")
    extensions = fields.get("extensions")
    if extensions is not None and not isinstance(extensions, dict):
        raise CardError(source, prefix + "extensions",
                        f"must be an object, got a {_json_type(extensions)} — use {{}} or remove it")
    values["extensions"] = copy.deepcopy(extensions or {})
    _check_personae(values["extensions"], source, prefix + "extensions.personae")
    return Character(**values, source=source, spec=spec, raw=copy.deepcopy(data))


def _json_type(value) -> str:
    """The JSON name of a value's type, for messages people who edit JSON understand."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    return {int: "number", float: "number", str: "string", list: "list", dict: "object"}.get(
        type(value), type(value).__name__)


def _text(value, source: str, where: str) -> str:
    """A text field (null means empty)."""
    if value is not None and not isinstance(value, str):
        raise CardError(source, where, f"must be text, got a {_json_type(value)} ({value!r:.30}) — put it in quotes")
    return value or ""


def _string_list(value, source: str, where: str) -> list[str]:
    """A list of strings from a card (null means empty)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise CardError(source, where, f"must be a list of strings, got a {_json_type(value)} — use [\"...\"]")
    for i, item in enumerate(value):
        _text(item, source, f"{where}[{i}]")
    return list(value)


def _check_book(book, source: str, where: str) -> dict | None:
    """Validate the lorebook's shape; it is kept verbatim."""
    if book is None:
        return None
    if not isinstance(book, dict):
        raise CardError(source, where, f"must be an object, got a {_json_type(book)} — "
                                       "use {\"entries\": [...]} or remove it")
    entries = book.get("entries", [])
    if not isinstance(entries, list):
        raise CardError(source, where + ".entries", f"must be a list, got a {_json_type(entries)} — use [...]")
    for i, entry in enumerate(entries):
        here = f"{where}.entries[{i}]"
        if not isinstance(entry, dict):
            raise CardError(source, here, f"must be an object, got a {_json_type(entry)} — "
                                          "use {\"keys\": [...], \"content\": \"...\"}")
        _string_list(entry.get("keys"), source, here + ".keys")
        _string_list(entry.get("secondary_keys"), source, here + ".secondary_keys")
        _text(entry.get("content"), source, here + ".content")
    return copy.deepcopy(book)


def _check_personae(extensions: dict, source: str, where: str) -> None:
    """Validate our own extension early, so a typo fails at import, not mid-conversation."""
    personae = extensions.get("personae")
    if personae is None:
        return
    if not isinstance(personae, dict):
        raise CardError(source, where, f"must be an object, got a {_json_type(personae)} — "
                                       "use {\"generation\": {...}, \"probes\": [...]}")
    generation = personae.get("generation")
    if generation is not None and not isinstance(generation, dict):
        raise CardError(source, where + ".generation", "must be an object — use e.g. {\"temperature\": 0.8}")
    for key, value in (generation or {}).items():
        here = f"{where}.generation.{key}"
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key in ("temperature", "top_p", "repetition_penalty") and not number:
            raise CardError(source, here, f"must be a number, got {value!r:.30} — e.g. 0.8")
        if key == "max_new_tokens" and not (number and value == int(value) and value > 0):
            raise CardError(source, here, f"must be a positive whole number, got {value!r:.30} — e.g. 200")
        if key == "stop":
            _string_list([value] if isinstance(value, str) else value, source, here)
    for name in ("probes", "traits"):
        if personae.get(name) is not None and not isinstance(personae[name], list):
            raise CardError(source, f"{where}.{name}", f"must be a list, got a {_json_type(personae[name])} — use [...]")


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
    elif suffix == ".png":
        try:
            payload = _card_png(character)
        except Exception as error:  # a bad avatar_png: Pillow raises many kinds
            raise CardError(path, "avatar_png", f"not a readable image ({error}) — "
                                                "set avatar_png to PNG bytes, or None for a placeholder") from None
    else:
        raise CardError(path, "file", f"unsupported suffix {path.suffix!r} — save as .json or .png")
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

    info = PngInfo()
    # Readers prefer ccv3; chara is the V2 fallback older apps understand.
    info.add_text("ccv3", encode(card_dict(character, V3)))
    info.add_text("chara", encode(card_dict(character, V2)))
    avatar = character.avatar_png or placeholder_avatar(character.name)
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

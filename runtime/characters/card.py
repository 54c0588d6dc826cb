"""A character: its card's fields, macros, greetings, lorebook and validation (V1/V2/V3 dicts)."""

from __future__ import annotations

import copy
import hashlib
import re
import unicodedata
from dataclasses import dataclass, field

from runtime.characters import macros
from runtime.characters import limits
from runtime.errors import PersonaeError

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
GENERATION_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "repeat_last_n",
                   "frequency_penalty", "presence_penalty", "dry_multiplier", "max_new_tokens", "stop")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

PROMPT_STYLES = ("full", "short")
_FIRST_SENTENCE = re.compile(r".+?[.!?](?=\s|$)|.+", re.DOTALL)
DEFAULT_INSTRUCTION = (
    "You are {{char}}. Stay in character: reply in {{char}}'s own voice, "
    "and never say that you are an AI, an assistant or a language model."
)

_ORIGINAL = re.compile(r"\{\{\s*original\s*\}\}", re.IGNORECASE)
_START = re.compile(r"<START>", re.IGNORECASE)
_SPEAKER = re.compile(r"^\s*(?:(?i:\{\{\s*(user|char)\s*\}\})|<(USER|BOT)>)\s*:\s?(.*)$")


class CardError(PersonaeError, ValueError):
    """A card file that cannot be imported; message names the file and the field."""

    def __init__(self, source, field: str, problem: str):
        # Printable: a card's file name or text must not reach a terminal as escape codes.
        self.source = limits.printable(str(source)) if source else "<card>"
        self.field = limits.printable(field)
        self.problem = limits.printable(" ".join(str(problem).split()))  # one line, whatever the cause said
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
    # What the file held beyond the card, kept for writing it back: the PNG's card chunks as written, .charx assets.
    carried: dict = field(default_factory=dict, repr=False)

    @property
    def id(self) -> str:
        """Slug of the name ([a-z0-9-]); the key for this character everywhere."""
        ascii_name = unicodedata.normalize("NFKD", self.name).encode("ascii", "ignore").decode()
        slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")
        digest = hashlib.sha1(self.name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        if len(slug) > limits.MAX_ID_CHARS:
            # Ids name files: bounded, and still unique through the hash of the whole name.
            slug = slug[:limits.MAX_ID_CHARS - 9].rstrip("-") + "-" + digest
        # Names with no latin letters still need a stable, unique key.
        return slug or "character-" + digest

    @property
    def display_name(self) -> str:
        """What {{char}} becomes: the V3 nickname if the card has one, else the name."""
        nickname = self.raw.get("data", {}).get("nickname") if self.spec == V3 else None
        return nickname if isinstance(nickname, str) and nickname.strip() else self.name

    def render(self, text: str, user: str = "User") -> str:
        """Fill in {{char}}, {{user}}, <BOT>, <USER> and the other macros of runtime.characters.macros."""
        return macros.render(text or "", self.display_name, user)

    def instruction(self, user: str = "User") -> str:
        """The system prompt's instruction: the card's system_prompt ({{original}} = ours) or the default."""
        instruction = self.system_prompt.strip()
        if instruction:
            # V2 spec: {{original}} stands for the frontend's own system prompt.
            instruction = _ORIGINAL.sub(lambda _: DEFAULT_INSTRUCTION, instruction)
        return self.render(instruction or DEFAULT_INSTRUCTION, user)

    @property
    def prompt_style(self) -> str:
        """'full' (the whole card) or 'short' (name and a line: the character's weights carry the persona)."""
        return (self.extensions.get("personae") or {}).get("prompt_style") or "full"

    def short_line(self) -> str:
        """The one line of a short prompt: extensions.personae.short_prompt, else the description's first sentence."""
        line = (self.extensions.get("personae") or {}).get("short_prompt") or ""
        if not line.strip():
            line = _FIRST_SENTENCE.match(self.description.strip()).group(0) if self.description.strip() else ""
        return line.strip()

    def system_text(self, user: str = "User", style: str | None = None) -> str:
        """The system message: instruction (card's system_prompt or the default) + persona.

        style None follows the card's prompt_style; "short" is the instruction and one line, for characters
        whose trained weights carry the persona (shorter prompts, faster first tokens).
        """
        if (style or self.prompt_style) == "short":
            line = self.short_line()
            return self.instruction(user) + ("\n\n" + self.render(line, user) if line else "")
        parts = [self.instruction(user)]
        if self.description.strip():
            parts.append(self.description.strip())
        if self.personality.strip():
            parts.append("{{char}}'s personality: " + self.personality.strip())
        if self.scenario.strip():
            parts.append("Scenario: " + self.scenario.strip())
        # creator_notes are deliberately absent: they are notes to humans, not to the model.
        return parts[0] + "".join("\n\n" + self.render(p, user) for p in parts[1:])

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

    def greetings(self, user: str = "User", group: bool = False) -> list[str]:
        """first_mes then alternate_greetings, rendered; in a group channel V3 group_only_greetings come first."""
        texts = [self.first_mes, *self.alternate_greetings]
        if group and self.spec == V3:
            extra = self.raw.get("data", {}).get("group_only_greetings")
            texts = [t for t in extra if isinstance(t, str)] + texts if isinstance(extra, list) else texts
        return [self.render(t, user).strip() for t in texts if t and t.strip()]

    def post_history(self, user: str = "User") -> str:
        """post_history_instructions, rendered (goes after the chat history)."""
        return self.render(self.post_history_instructions, user).strip()

    def lore_entries(self) -> list[LoreEntry]:
        """The lorebook's entries as LoreEntry objects."""
        book = self.character_book or {}
        return [_lore_entry(e) for e in book.get("entries") or [] if isinstance(e, dict)]

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


def parse_card(data: dict, source: str = "") -> Character:
    """A card dict (V1 flat, V2 or V3) -> Character; CardError names the bad field."""
    source = source or "<card>"
    if not isinstance(data, dict):
        raise CardError(source, "(card)", f"is a JSON {_json_type(data)}, not an object — a card is a JSON object")
    if limits.too_deep(data):  # before any copy.deepcopy, which recurses
        raise CardError(source, "(card)", f"objects or lists nest deeper than the limit of {limits.MAX_DEPTH}")
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
    problem = limits.name_problem(name)
    if problem:
        raise CardError(source, prefix + "name", problem)
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


def _text(value, source: str, where: str, limit: int = limits.MAX_TEXT_CHARS) -> str:
    """A text field (null means empty)."""
    if value is not None and not isinstance(value, str):
        raise CardError(source, where, f"must be text, got a {_json_type(value)} ({limits._short(value)}) — "
                                       "put it in quotes")
    problem = limits.text_problem(value or "", limit)
    if problem:
        raise CardError(source, where, problem)
    return value or ""


def _string_list(value, source: str, where: str, most: int = limits.MAX_LIST_ITEMS,
                 limit: int = limits.MAX_TEXT_CHARS) -> list[str]:
    """A list of strings from a card (null means empty)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise CardError(source, where, f"must be a list of strings, got a {_json_type(value)} — use [\"...\"]")
    if len(value) > most:
        raise CardError(source, where, f"has {len(value)} items, more than the limit of {most} — remove some")
    for i, item in enumerate(value):
        _text(item, source, f"{where}[{i}]", limit)
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
    if len(entries) > limits.MAX_LORE_ENTRIES:
        raise CardError(source, where + ".entries", f"has {len(entries)} entries, more than the limit of "
                                                    f"{limits.MAX_LORE_ENTRIES} — split the lorebook")
    for i, entry in enumerate(entries):
        here = f"{where}.entries[{i}]"
        if not isinstance(entry, dict):
            raise CardError(source, here, f"must be an object, got a {_json_type(entry)} — "
                                          "use {\"keys\": [...], \"content\": \"...\"}")
        _string_list(entry.get("keys"), source, here + ".keys", limits.MAX_LORE_KEYS, limits.MAX_KEY_CHARS)
        _string_list(entry.get("secondary_keys"), source, here + ".secondary_keys", limits.MAX_LORE_KEYS,
                     limits.MAX_KEY_CHARS)
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
        if key == "stop":
            _string_list([value] if isinstance(value, str) else value, source, here, 16, 200)
        elif key in GENERATION_KEYS:
            problem = limits.number_problem(key, value)
            if problem:
                raise CardError(source, here, problem)
    style = personae.get("prompt_style")
    if style is not None and style not in PROMPT_STYLES:
        raise CardError(source, where + ".prompt_style", f"{style!r:.40} is not a prompt style — use \"full\" (the whole "
                                                         "card) or \"short\" (name and a line, for trained weights)")
    if personae.get("short_prompt") is not None:
        _text(personae["short_prompt"], source, where + ".short_prompt")
    weights = personae.get("weights")
    if weights is not None:
        _check_weights(weights, source, where + ".weights")
    for name in ("probes", "traits"):
        if personae.get(name) is not None and not isinstance(personae[name], list):
            raise CardError(source, f"{where}.{name}", f"must be a list, got a {_json_type(personae[name])} — use [...]")


def _check_weights(weights, source: str, where: str) -> None:
    """The card's own weights folder: a relative path inside the card's folder or package."""
    from pathlib import PurePosixPath, PureWindowsPath

    if not isinstance(weights, str) or not weights.strip():
        raise CardError(source, where, "must be a folder name relative to the card, e.g. \"weights\"")
    text_problem = limits.text_problem(weights, 1_000)
    if text_problem or "\x00" in weights:
        raise CardError(source, where, text_problem or "contains a NUL character")
    posix, windows = PurePosixPath(weights), PureWindowsPath(weights)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or ".." in posix.parts or ".." in windows.parts:
        raise CardError(source, where, f"{weights!r:.60} leaves the card's folder — weights must be a folder "
                                       "inside the card's own folder or package, e.g. \"weights\"")

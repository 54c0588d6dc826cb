"""Lorebook scanning as SillyTavern does it: which entries fire, where they go, within a token budget.

Reads the V2/V3 `character_book` shape plus SillyTavern's own fields (in `entries[].extensions`, as
SillyTavern exports them): selectiveLogic, position 0-6, depth, role, scan_depth, match_whole_words,
case_sensitive, probability, recursion flags. V3 `@@decorators` at the top of an entry's content are
read too; the ones not supported are reported by `unsupported()`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import regex

# SillyTavern's numbers for an entry's position and secondary-key logic (world-info.js).
BEFORE, AFTER, AN_TOP, AN_BOTTOM, AT_DEPTH, EM_TOP, EM_BOTTOM, OUTLET = range(8)
AND_ANY, NOT_ALL, NOT_ANY, AND_ALL = range(4)
ROLES = ("system", "user", "assistant")
# SillyTavern's defaults: depth 4 for at-depth entries and the author's note.
DEFAULT_DEPTH = 4
# A regex key longer than this, or one that runs longer than this on the scanned text, is skipped:
# a card must not be able to hang the prompt builder.
MAX_PATTERN_CHARS = 2000
REGEX_TIMEOUT_S = 0.05
MAX_RECURSION_STEPS = 3
DECORATORS = {
    "activate", "dont_activate", "depth", "role", "scan_depth", "position", "additional_keys",
    "exclude_keys", "activate_only_after", "activate_only_every", "ignore_on_max_context",
    "keep_activate_after_match", "dont_activate_after_match", "reverse_depth", "is_greeting",
}
# SillyTavern's generation types an entry's `triggers` may name, and the ones Personae has: a new reply,
# a swipe (a client re-sending the same chat) and a regenerate (/v1/regenerate, Discord's re-roll).
TRIGGERS = ("normal", "continue", "impersonate", "swipe", "regenerate", "quiet")
GENERATIONS = ("normal", "swipe", "regenerate")
FOREVER = 10 ** 9  # a sticky or cooldown that never ends (@@keep_activate_after_match, @@dont_activate_after_match)
GROUP_WEIGHT = 100  # SillyTavern's default weight of an entry in its inclusion group
# V3 @@position values -> SillyTavern positions.
V3_POSITIONS = {"before_desc": BEFORE, "after_desc": AFTER, "before_example": EM_TOP, "after_example": EM_BOTTOM,
                "personality": AFTER, "scenario": AFTER}


@dataclass
class Entry:
    """One lorebook entry, with every activation and placement setting resolved."""

    keys: list[str]
    content: str
    index: int = 0
    enabled: bool = True
    constant: bool = False
    selective: bool = False
    secondary_keys: list[str] = field(default_factory=list)
    logic: int = AND_ANY
    exclude_keys: list[str] = field(default_factory=list)
    insertion_order: int = 100
    priority: int = 0
    case_sensitive: bool | None = None
    whole_words: bool | None = None
    use_regex: bool = False
    position: int = AFTER
    depth: int = DEFAULT_DEPTH
    role: str = "system"
    scan_depth: int | None = None
    probability: int = 100
    exclude_recursion: bool = False
    prevent_recursion: bool = False
    delay_until_recursion: bool = False
    ignore_budget: bool = False
    force: bool | None = None  # @@activate (True) / @@dont_activate (False)
    only_after: int = 0
    only_every: int = 0
    name: str = ""
    unsupported: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)  # inclusion groups: one entry of a group fires at a time
    group_override: bool = False  # in its group, wins over the others (highest insertion_order first)
    group_weight: int = GROUP_WEIGHT
    group_scoring: bool = False  # in its group, only the entries matching the most keys take part
    sticky: int = 0  # stays active this many messages after it fired
    cooldown: int = 0  # cannot fire again for this many messages after it fired (after its sticky ends)
    delay: int = 0  # cannot fire before the chat has this many messages
    outlet: str = ""  # position 7: where {{outlet::NAME}} stands in the card
    reverse_depth: int | None = None  # @@reverse_depth N: N messages from the chat's start (depth = length - N)
    triggers: list[str] = field(default_factory=list)  # SillyTavern's generation types it fires on; empty: all
    greeting: int | None = None  # @@is_greeting N: only in chats that opened with greeting N (0: first_mes)
    for_names: set[str] = field(default_factory=set)  # SillyTavern's character filter: only (or, excluding: not) these
    exclude_names: bool = False


@dataclass
class Injection:
    """Text for the prompt: where it goes (position, and depth/role for in-chat ones) and its rank."""

    content: str
    position: int = AFTER
    depth: int = DEFAULT_DEPTH
    role: str = "system"
    order: int = 0
    rank: int = 0  # lower is kept longer when the prompt budget is short


def _int(value, default: int = 0) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def _strings(value) -> list[str]:
    return [k for k in value if isinstance(k, str) and k.strip()] if isinstance(value, list) else []


def parse_decorators(content: str) -> tuple[dict[str, str], list[str], str]:
    """Leading `@@name value` lines -> (supported decorators, ignored names, remaining content).

    A `@@@name` line right after a decorator is its fallback, used only when that one is unsupported.
    """
    found: dict[str, str] = {}
    ignored: list[str] = []
    lines = content.split("\n")
    i, last_supported = 0, True
    while i < len(lines) and lines[i].startswith("@@"):
        line = lines[i]
        fallback = line.startswith("@@@")
        name, _, value = line.lstrip("@").partition(" ")
        name = name.strip().lower()
        i += 1
        if fallback and last_supported:
            continue
        if name in DECORATORS:
            found[name] = value.strip()
            last_supported = True
        else:
            if not fallback or name:
                ignored.append("@@" + name)
            last_supported = False
    return found, ignored, "\n".join(lines[i:])


def entry_from(raw: dict, index: int = 0) -> Entry:
    """A character_book entry dict (with SillyTavern's extensions and V3 decorators) -> Entry."""
    ext = raw.get("extensions") if isinstance(raw.get("extensions"), dict) else {}
    decorators, ignored, content = parse_decorators(raw.get("content") or "")
    position = ext.get("position")
    if not isinstance(position, int) or isinstance(position, bool) or not 0 <= position <= OUTLET:
        # Cards without SillyTavern's number say before_char/after_char; absent means after the card.
        position = BEFORE if raw.get("position") == "before_char" else AFTER
    role = ext.get("role")
    entry = Entry(
        keys=_strings(raw.get("keys")), content=content, index=index,
        enabled=raw.get("enabled", True) is not False, constant=bool(raw.get("constant")),
        selective=bool(raw.get("selective")), secondary_keys=_strings(raw.get("secondary_keys")),
        logic=_int(ext.get("selectiveLogic"), AND_ANY) if _int(ext.get("selectiveLogic"), 0) in range(4) else AND_ANY,
        insertion_order=_int(raw.get("insertion_order"), 100), priority=_int(raw.get("priority"), 0),
        case_sensitive=_bool_or_none(raw.get("case_sensitive", ext.get("case_sensitive"))),
        whole_words=_bool_or_none(ext.get("match_whole_words")),
        # SillyTavern writes use_regex: true on every entry and marks regex keys /like this/ instead.
        use_regex=bool(raw.get("use_regex")) and "selectiveLogic" not in ext and "position" not in ext,
        position=position, depth=max(_int(ext.get("depth"), DEFAULT_DEPTH), 0),
        role=ROLES[role] if isinstance(role, int) and role in range(3) else "system",
        scan_depth=_int(ext.get("scan_depth")) if _int(ext.get("scan_depth"), -1) >= 0 else None,
        probability=_int(ext.get("probability"), 100) if ext.get("useProbability", True) is not False else 100,
        exclude_recursion=bool(ext.get("exclude_recursion")), prevent_recursion=bool(ext.get("prevent_recursion")),
        delay_until_recursion=bool(ext.get("delay_until_recursion")), ignore_budget=bool(ext.get("ignore_budget")),
        name=raw.get("name") or raw.get("comment") or "", unsupported=ignored,
    )
    if isinstance(ext.get("group"), str):
        entry.groups = [g.strip() for g in ext["group"].split(",") if g.strip()]
    entry.group_override, entry.group_scoring = bool(ext.get("group_override")), bool(ext.get("use_group_scoring"))
    entry.group_weight = max(_int(ext.get("group_weight"), GROUP_WEIGHT), 0)
    entry.sticky, entry.cooldown, entry.delay = (max(_int(ext.get(k)), 0) for k in ("sticky", "cooldown", "delay"))
    entry.outlet = ext.get("outlet_name").strip() if isinstance(ext.get("outlet_name"), str) else ""
    entry.triggers = [t for t in _strings(ext.get("triggers")) if t in TRIGGERS]
    # SillyTavern features set on the entry that Personae does not run: say so rather than act silently.
    if ext.get("vectorized"):
        entry.unsupported.append("SillyTavern vectorized (vectorized)")
    never = sorted(set(_strings(ext.get("triggers"))) - set(GENERATIONS))
    if never:  # continue / impersonate / quiet generations do not happen here, or an unknown name
        entry.unsupported.append(f"SillyTavern generation trigger(s) {', '.join(never)} (triggers; Personae "
                                 f"generates only {', '.join(GENERATIONS)})")
    where = ext.get("st_characterFilter")
    if isinstance(where, dict):
        entry.for_names = {n.strip().casefold() for n in _strings(where.get("names"))}
        entry.exclude_names = bool(where.get("isExclude"))
        if _strings(where.get("tags")):  # SillyTavern tag ids: its tag list is not in the file
            entry.unsupported.append("SillyTavern character filter by tags (characterFilter.tags)")
    _apply_decorators(entry, decorators)
    return entry


def _bool_or_none(value) -> bool | None:
    return value if isinstance(value, bool) else None


def _apply_decorators(entry: Entry, decorators: dict[str, str]) -> None:
    """V3 decorators override the entry's own fields."""
    if "activate" in decorators:
        entry.force = True
    if "dont_activate" in decorators:
        entry.force = False
    if decorators.get("depth", "").strip().isdigit():
        entry.position, entry.depth = AT_DEPTH, int(decorators["depth"])
    if decorators.get("reverse_depth", "").strip().isdigit():
        entry.position, entry.reverse_depth = AT_DEPTH, int(decorators["reverse_depth"])
    if decorators.get("role", "").strip().lower() in ROLES:
        entry.role = decorators["role"].strip().lower()
    if decorators.get("scan_depth", "").strip().isdigit():
        entry.scan_depth = int(decorators["scan_depth"])
    if decorators.get("position", "").strip().lower() in V3_POSITIONS:
        entry.position = V3_POSITIONS[decorators["position"].strip().lower()]
    elif "position" in decorators:
        entry.unsupported.append(f"@@position {decorators['position']}")
    if "additional_keys" in decorators:
        # V3: the entry needs one of these as well, as SillyTavern's AND ANY secondary keys.
        entry.selective, entry.logic = True, AND_ANY
        entry.secondary_keys += [k.strip() for k in decorators["additional_keys"].split(",") if k.strip()]
    if "exclude_keys" in decorators:
        entry.exclude_keys = [k.strip() for k in decorators["exclude_keys"].split(",") if k.strip()]
    for name, attribute in (("activate_only_after", "only_after"), ("activate_only_every", "only_every")):
        if decorators.get(name, "").strip().isdigit():
            setattr(entry, attribute, int(decorators[name]))
    if "keep_activate_after_match" in decorators:
        entry.sticky = FOREVER
    if "dont_activate_after_match" in decorators:
        entry.cooldown = FOREVER
    if decorators.get("is_greeting", "").strip().isdigit():
        entry.greeting = int(decorators["is_greeting"])
    if "ignore_on_max_context" in decorators:
        entry.priority = min(entry.priority, -(10 ** 6))  # first to go when the prompt is full


def entries(book: dict | None) -> list[Entry]:
    """Every entry of a character_book."""
    raw = (book or {}).get("entries") or []
    return [entry_from(e, i) for i, e in enumerate(raw) if isinstance(e, dict)]


def unsupported(book: dict | None) -> list[str]:
    """Decorators and positions in the book that Personae ignores, one line each (for warnings)."""
    found = []
    for entry in entries(book):
        label = entry.name or (entry.keys[:1] or [f"#{entry.index}"])[0]
        for name in entry.unsupported:
            found.append(f"lore entry {label!r}: {name} is not supported and is ignored")
        if entry.position == OUTLET and not entry.outlet:
            found.append(f"lore entry {label!r}: position 'outlet' without an outlet name; the entry is never inserted")
    return found


# --- Matching ------------------------------------------------------------------------------------


def _as_regex(key: str) -> tuple[str, int] | None:
    """(pattern, flags) for a /pattern/flags key, as SillyTavern writes them; None for a plain key."""
    if len(key) < 3 or not key.startswith("/"):
        return None
    end = key.rfind("/")
    flags = key[end + 1:]
    if end <= 0 or any(f not in "gimsuy" for f in flags):
        return None
    value = (regex.IGNORECASE if "i" in flags else 0) | (regex.MULTILINE if "m" in flags else 0)
    return key[1:end], value | (regex.DOTALL if "s" in flags else 0)


# Patterns that failed or ran out of time once are not run again, so many bad keys cost each 50 ms once.
_BAD_PATTERNS: set[tuple[str, int]] = set()
MAX_BAD_PATTERNS = 10_000


def _search(pattern: str, flags: int, text: str) -> bool:
    """A bounded regex search: too long a pattern, a bad one, or one that runs too long never matches."""
    if len(pattern) > MAX_PATTERN_CHARS or (pattern, flags) in _BAD_PATTERNS:
        return False
    try:
        return regex.search(pattern, text, flags, timeout=REGEX_TIMEOUT_S) is not None
    except (regex.error, TimeoutError, ValueError):
        if len(_BAD_PATTERNS) < MAX_BAD_PATTERNS:
            _BAD_PATTERNS.add((pattern, flags))
        return False


def key_matches(key: str, text: str, entry: Entry, case_sensitive: bool = False, whole_words: bool = True) -> bool:
    """One key against the scanned text, with SillyTavern's rules for regex, case and whole words."""
    key = key.strip()
    if not key:
        return False
    parsed = _as_regex(key)
    if parsed:
        return _search(parsed[0], parsed[1], text)
    case = entry.case_sensitive if entry.case_sensitive is not None else case_sensitive
    flags = 0 if case else regex.IGNORECASE
    if entry.use_regex:
        return _search(key, flags, text)
    whole = entry.whole_words if entry.whole_words is not None else whole_words
    if whole and len(key.split()) == 1:
        return _search(rf"(?:^|\W)({regex.escape(key)})(?:$|\W)", flags, text)
    return (key in text) if case else (key.lower() in text.lower())


def entry_matches(entry: Entry, text: str, **options) -> bool:
    """Primary keys, then secondary keys by the entry's logic, then V3 exclude keys."""
    if not any(key_matches(k, text, entry, **options) for k in entry.keys):
        return False
    if entry.exclude_keys and any(key_matches(k, text, entry, **options) for k in entry.exclude_keys):
        return False
    if not (entry.selective and entry.secondary_keys):
        return True
    hits = [key_matches(k, text, entry, **options) for k in entry.secondary_keys]
    return {AND_ANY: any(hits), AND_ALL: all(hits), NOT_ANY: not any(hits), NOT_ALL: not all(hits)}[entry.logic]


# --- Scanning ------------------------------------------------------------------------------------


@dataclass
class ScanSettings:
    """How a scan runs; the book's own scan_depth, token_budget and recursive_scanning override these."""

    scan_depth: int = 4
    token_budget: int | None = None
    recursive: bool = False
    max_recursion_steps: int = MAX_RECURSION_STEPS
    case_sensitive: bool = False
    whole_words: bool = True
    assistant_turns: int = 0  # replies so far, for @@activate_only_after / _every
    seed: int | None = None
    # Chat lengths (messages) at which earlier prompts were built, for sticky / cooldown; None: every length.
    prompt_points: list[int] | None = None
    generation: str = "normal"  # which kind of generation this prompt is for (an entry's `triggers`)
    # Who answers, for character filters: SillyTavern names a character by its avatar file's name, which is
    # the character's name unless renamed; its name and id are matched, ignoring case.
    character: set[str] = field(default_factory=set)
    greeting: int | None = None  # which greeting the chat opened with (0: first_mes); None: not known


def scan(book: dict | None, texts: list[str], settings: ScanSettings | None = None,
         render=lambda s: s, count_tokens=None) -> list[Entry]:
    """The entries that fire for the recent texts (oldest first), admitted within the token budget.

    Returned in admission order: highest priority, then highest insertion_order first, which is the
    order a short prompt keeps them in. Sticky / cooldown / delay (SillyTavern's timed effects) are
    worked out from the chat itself, and one entry per inclusion group fires.
    """
    settings = settings or ScanSettings()
    book = book or {}
    depth = _int(book.get("scan_depth"), -1)
    depth = depth if depth >= 0 else settings.scan_depth
    budget = _int(book.get("token_budget"), 0) or settings.token_budget
    recursive = book.get("recursive_scanning")
    recursive = settings.recursive if not isinstance(recursive, bool) else recursive
    rng = random.Random(settings.seed)
    options = {"case_sensitive": settings.case_sensitive, "whole_words": settings.whole_words}
    candidates = sorted((e for e in entries(book) if e.enabled and (e.position != OUTLET or e.outlet)
                         and (not e.triggers or settings.generation in e.triggers) and _for(e, settings.character)
                         # @@is_greeting: when the opening greeting is not known (cut from the history), not applied.
                         and (e.greeting is None or settings.greeting is None or e.greeting == settings.greeting)),
                        key=lambda e: (-e.priority, -e.insertion_order, e.index))
    timed = {e.index: timed_state(e, texts, depth, settings, render, options) for e in candidates
             if e.sticky or e.cooldown or e.delay}
    admitted: list[Entry] = []
    failed: set[int] = set()
    used, recursion_text, step = 0, "", 0
    while True:
        fired = []
        for entry in candidates:
            if entry.index in failed or any(entry is a for a in admitted):
                continue
            sticky, blocked = timed.get(entry.index, (False, False))
            if blocked:
                continue
            if not sticky and (step and entry.exclude_recursion or not step and entry.delay_until_recursion):
                continue
            if not _timing_allows(entry, settings.assistant_turns):
                continue
            if sticky or _fires(entry, texts, depth, recursion_text if step else "", render, options):
                fired.append(entry)
        fired = _one_per_group(fired, admitted, timed, texts, depth, recursion_text, render, options, rng)
        added = []
        for entry in fired:
            if entry.probability < 100 and rng.random() * 100 >= entry.probability:
                failed.add(entry.index)
                continue
            cost = count_tokens(render(entry.content)) if count_tokens and budget else 0
            if budget and used + cost > budget and not entry.ignore_budget:
                continue
            used += cost
            added.append(entry)
        admitted += added
        step += 1
        new_text = "\n".join(render(e.content) for e in added if not e.prevent_recursion)
        if not (recursive and new_text and step <= settings.max_recursion_steps):
            return admitted
        recursion_text += "\n" + new_text


def timed_state(entry: Entry, texts: list[str], depth: int, settings: ScanSettings, render,
                options) -> tuple[bool, bool]:
    """(sticky now, blocked now) of an entry with sticky / cooldown / delay, replayed over the chat.

    SillyTavern keeps these effects in the chat's metadata; Personae works them out from the chat
    itself: at each earlier prompt (a chat length) the entry fired if its keys matched then and no
    effect held it back, which starts its sticky and cooldown spans (counted in messages, as SillyTavern
    does). Earlier probability rolls, group draws and budgets are not replayed.
    """
    now = len(texts)
    points = sorted({n for n in (settings.prompt_points or range(1, now)) if 0 < n < now}) + [now]
    sticky = cooldown = None  # (start, end, protected)
    for n in points:
        if sticky and (n <= sticky[0] or n >= sticky[1]):
            if n >= sticky[1] and entry.cooldown:  # a cooldown starts when a sticky span ends
                cooldown = (n, n + entry.cooldown, True)
            sticky = None
        if cooldown and ((n <= cooldown[0] and not cooldown[2]) or n >= cooldown[1]):
            cooldown = None
        blocked = n < entry.delay or (cooldown is not None and sticky is None)
        if n == now:
            return sticky is not None, blocked
        if sticky is not None or (not blocked and _fires(entry, texts[:n], depth, "", render, options)):
            sticky = sticky or ((n, n + entry.sticky, False) if entry.sticky else None)
            cooldown = cooldown or ((n, n + entry.cooldown, False) if entry.cooldown else None)
    return False, False


def _one_per_group(fired, admitted, timed, texts, depth, recursion_text, render, options, rng) -> list[Entry]:
    """SillyTavern's inclusion groups: of the entries of one group that fired, one goes in.

    A sticky member keeps its place; a group that already has an entry in the prompt takes no more;
    with group scoring only the members matching the most keys stay; then the group_override member
    with the highest insertion_order wins, else one is drawn by group_weight.
    """
    groups: dict[str, list[Entry]] = {}
    for entry in fired:
        for name in entry.groups:
            groups.setdefault(name, []).append(entry)
    dropped: set[int] = set()
    for name, members in groups.items():
        members = [e for e in members if e.index not in dropped]
        sticky = [e for e in members if timed.get(e.index, (False, False))[0]]
        if sticky:
            dropped.update(e.index for e in members if e not in sticky)
            continue
        if any(name in e.groups for e in admitted):
            dropped.update(e.index for e in members)
            continue
        if any(e.group_scoring for e in members):
            text = "\n".join(texts[-depth:] if depth else []) + recursion_text
            scores = {e.index: _score(e, text, render, options) for e in members}
            best = max(scores.values())
            losers = [e for e in members if e.group_scoring and scores[e.index] < best]
            dropped.update(e.index for e in losers)
            members = [e for e in members if e not in losers]
        if len(members) <= 1:
            continue
        preferred = sorted((e for e in members if e.group_override), key=lambda e: -e.insertion_order)
        if preferred:
            winner = preferred[0]
        else:
            roll, winner = rng.random() * sum(e.group_weight for e in members), members[-1]
            for entry in members:
                roll -= entry.group_weight
                if roll <= 0:
                    winner = entry
                    break
        dropped.update(e.index for e in members if e is not winner)
    return [e for e in fired if e.index not in dropped]


def _score(entry: Entry, text: str, render, options) -> int:
    """How many of an entry's keys match (SillyTavern's group score: primary, plus secondary for AND ANY/ALL)."""
    probe = Entry(**{**entry.__dict__, "keys": [render(k) for k in entry.keys]})
    primary = sum(key_matches(k, text, probe, **options) for k in probe.keys)
    secondary = sum(key_matches(render(k), text, probe, **options) for k in entry.secondary_keys)
    if entry.selective and entry.secondary_keys:
        if entry.logic == AND_ANY or (entry.logic == AND_ALL and secondary == len(entry.secondary_keys)):
            return primary + secondary
    return primary


def _for(entry: Entry, character: set[str]) -> bool:
    """SillyTavern's character filter: an entry naming characters is only for them (or, excluding, not for them)."""
    if not entry.for_names:
        return True
    named = bool(entry.for_names & {name.casefold() for name in character})
    return named != entry.exclude_names


def _timing_allows(entry: Entry, assistant_turns: int) -> bool:
    if entry.only_after and assistant_turns < entry.only_after:
        return False
    return not (entry.only_every and assistant_turns % entry.only_every)


def _fires(entry: Entry, texts: list[str], depth: int, recursion_text: str, render, options) -> bool:
    if entry.force is not None:
        return entry.force
    if entry.constant:
        return True
    scan_depth = entry.scan_depth if entry.scan_depth is not None else depth
    recent = texts[-scan_depth:] if scan_depth else []
    text = "\n".join(recent) + recursion_text
    return bool(text.strip()) and entry_matches(
        Entry(**{**entry.__dict__, "keys": [render(k) for k in entry.keys],
                 "secondary_keys": [render(k) for k in entry.secondary_keys]}), text, **options)


def outlets(fired: list[Entry], render=lambda s: s) -> dict[str, str]:
    """The text of each outlet ({{outlet::NAME}} in the card): its fired entries, by insertion_order."""
    found: dict[str, list[Entry]] = {}
    for entry in fired:
        if entry.position == OUTLET and entry.outlet:
            found.setdefault(entry.outlet, []).append(entry)
    return {name: "\n".join(render(e.content).strip() for e in sorted(group, key=lambda e: e.insertion_order))
            for name, group in found.items()}


def injections(fired: list[Entry], render=lambda s: s, chat_length: int = 0) -> list[Injection]:
    """Fired entries as prompt injections, ranked in admission order (the first is dropped last); outlets aside.

    `chat_length` (messages) turns a V3 @@reverse_depth into a depth: the spec's `@@depth length - N`.
    """
    out = []
    for rank, entry in enumerate(fired):
        if entry.position == OUTLET:
            continue
        depth = entry.depth if entry.reverse_depth is None else max(chat_length - entry.reverse_depth, 0)
        content = render(entry.content).strip()
        if content:
            out.append(Injection(content, entry.position, depth, entry.role, entry.insertion_order, rank))
    return out


def depth_prompt(extensions: dict, render=lambda s: s) -> Injection | None:
    """SillyTavern's character note, `extensions.depth_prompt` {prompt, depth, role}, as an in-chat injection."""
    note = (extensions or {}).get("depth_prompt")
    if not isinstance(note, dict) or not isinstance(note.get("prompt"), str) or not note["prompt"].strip():
        return None
    role = note.get("role") if note.get("role") in ROLES else "system"
    depth = _int(note.get("depth"), DEFAULT_DEPTH)
    return Injection(render(note["prompt"]).strip(), AT_DEPTH, max(depth, 0), role, rank=-1)

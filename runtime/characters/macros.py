"""SillyTavern-style {{macros}} in card text: names, random picks, dice, dates and formatting.

Supported (names are case-insensitive, as in SillyTavern):
  {{char}} <BOT>          the character's V3 nickname if set, else its name
  {{user}} <USER>         the user's name
  {{group}}               every character in the channel, comma-separated ({{char}} when alone)
  {{charIfNotGroup}}      {{char}} alone, {{group}} in a group channel
  {{random::a::b}}        one of the options, picked anew each time ({{random:a,b}} also works)
  {{pick::a::b}}          one of the options, stable for the same text, macro and seed
  {{roll:d6}}             dice: {{roll:2d6+1}}, {{roll:1d20-2}}, {{roll:6}} (= 1d6)
  {{time}} {{date}} {{weekday}} {{isotime}} {{isodate}}   e.g. 2:05 PM, December 2, 2026, Wednesday, 14:05, 2026-12-02
  {{time_UTC+2}}          the time at that UTC offset
  {{idle_duration}}       how long since the user's previous message ("5 minutes"); "just now" if unknown
  {{lastMessage}} {{lastUserMessage}} {{lastCharMessage}}   the latest messages of the chat
  {{original}}            the frontend's own text the field replaces (the default instruction in system_prompt)
  {{newline}}             a line break
  {{trim}}                removed, together with the line breaks around it
  {{outlet::NAME}}        the lorebook entries placed in that outlet (position 7) that fired; empty if none
  {{// comment}} {{noop}} {{banned "word"}}   removed
Anything else in braces ({{getvar::x}}, ...) is left as written.
"""

from __future__ import annotations

import random
import re
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone

# Dice are bounded so a card cannot ask for a billion rolls.
MAX_DICE, MAX_SIDES = 100, 1_000_000


@dataclass
class MacroContext:
    """What macros can refer to; `seed` makes random/pick/roll reproducible (tests, swipes)."""

    char: str = ""
    user: str = "User"
    group: list[str] = field(default_factory=list)
    original: str = ""
    now: datetime | None = None
    idle_since: datetime | None = None
    history: list[dict] = field(default_factory=list)
    seed: int | None = None
    rng: random.Random = field(default=None, repr=False)
    outlets: dict[str, str] = field(default_factory=dict)  # lorebook outlet name -> its fired entries' text

    def __post_init__(self):
        if self.rng is None:
            self.rng = random.Random(self.seed)


_COMMENT = re.compile(r"\{\{//[\s\S]*?\}\}")
_TRIM = re.compile(r"(?:\r?\n)*\{\{trim\}\}(?:\r?\n)*", re.IGNORECASE)
_BLANK = re.compile(r"\{\{(?:noop|banned\s+\"[^\"]*\")\}\}", re.IGNORECASE)
_RANDOM = re.compile(r"\{\{(random|pick)\s?::?([^}]*)\}\}", re.IGNORECASE)
_ROLL = re.compile(r"\{\{roll[\s:]([^}]+)\}\}", re.IGNORECASE)
_DICE = re.compile(r"^\s*(\d*)\s*d\s*(\d+)\s*(?:([+-])\s*(\d+))?\s*$", re.IGNORECASE)
_UTC = re.compile(r"\{\{time_UTC([+-]\d{1,2})\}\}", re.IGNORECASE)
_OUTLET = re.compile(r"\{\{outlet::([^}]*)\}\}", re.IGNORECASE)
_NAMED = re.compile(r"\{\{\s*([A-Za-z_]+)\s*\}\}|<(BOT|USER)>")


def expand(text: str, context: MacroContext) -> str:
    """The text with every supported macro replaced (see the module docstring)."""
    if not text or ("{{" not in text and "<" not in text):
        return text or ""
    text = _COMMENT.sub("", text)
    text = _BLANK.sub("", text)
    text = _OUTLET.sub(lambda m: context.outlets.get(m.group(1).strip(), ""), text)
    text = _RANDOM.sub(lambda m: _choose(m, context, text), text)
    text = _ROLL.sub(lambda m: _roll(m.group(1), context.rng), text)
    now = context.now or datetime.now().astimezone()
    text = _UTC.sub(lambda m: _clock(datetime.now(timezone.utc) if context.now is None else
                                     context.now.astimezone(timezone.utc), int(m.group(1))), text)
    text = _NAMED.sub(lambda m: _named(m, context, now), text)
    return _TRIM.sub("", text)


def _choose(match: re.Match, context: MacroContext, text: str) -> str:
    """{{random}} picks anew; {{pick}} picks the same option for the same text and seed."""
    body = match.group(2)
    if "::" in body:
        options = body.split("::")
    else:  # the comma form; '\\,' is a literal comma
        options = [o.strip().replace("\x00", ",") for o in body.replace("\\,", "\x00").split(",")]
    if not options:
        return ""
    if match.group(1).lower() == "pick":
        stable = random.Random(f"{context.seed}:{match.start()}:{text}")
        return stable.choice(options)
    return context.rng.choice(options)


def _roll(formula: str, rng: random.Random) -> str:
    """Total of a dice formula (XdY+Z); empty for a formula that is not one, as in SillyTavern."""
    formula = formula.strip()
    if formula.isdigit():
        formula = "1d" + formula
    match = _DICE.match(formula)
    if not match:
        return ""
    count, sides = int(match.group(1) or 1), int(match.group(2))
    if not (0 < count <= MAX_DICE and 0 < sides <= MAX_SIDES):
        return ""
    total = sum(rng.randint(1, sides) for _ in range(count))
    if match.group(3):
        total += int(match.group(4)) * (1 if match.group(3) == "+" else -1)
    return str(total)


def _clock(when: datetime, offset_hours: int = 0) -> str:
    """moment.js 'LT': 2:05 PM."""
    when = when + timedelta(hours=offset_hours)
    return f"{(when.hour % 12) or 12}:{when.minute:02d} {'AM' if when.hour < 12 else 'PM'}"


def humanize(delta: timedelta) -> str:
    """A duration in moment.js humanize() words: 'a few seconds', '5 minutes', 'a day'."""
    seconds = max(delta.total_seconds(), 0)
    minutes, hours, days = seconds / 60, seconds / 3600, seconds / 86400
    for limit, value, one, many in (
        (45, None, "a few seconds", None), (90, None, "a minute", None),
        (45 * 60, minutes, None, "minutes"), (90 * 60, None, "an hour", None),
        (22 * 3600, hours, None, "hours"), (36 * 3600, None, "a day", None),
        (26 * 86400, days, None, "days"), (45 * 86400, None, "a month", None),
        (320 * 86400, days / 30.4, None, "months"), (548 * 86400, None, "a year", None),
    ):
        if seconds < limit:
            return one if one else f"{round(value)} {many}"
    return f"{round(days / 365)} years"


def _idle(now: datetime, since: datetime | None) -> str:
    if since is None:
        return "just now"
    # Timestamps without a zone are the log's UTC.
    since = since if since.tzinfo else since.replace(tzinfo=timezone.utc)
    now = now if now.tzinfo else now.astimezone()
    return humanize(now - since)


def _last(history: list[dict], role: str | None) -> str:
    for message in reversed(history):
        if role is None or message.get("role") == role:
            return message.get("content", "")
    return ""


def _named(match: re.Match, context: MacroContext, now: datetime) -> str:
    """The value of a {{name}} macro, or the macro unchanged if it is not one we know."""
    name = (match.group(1) or match.group(2)).lower()
    group = ", ".join(context.group) if len(context.group) > 1 else context.char
    values = {
        "char": context.char, "bot": context.char, "user": context.user, "group": group,
        "charifnotgroup": group, "original": context.original, "newline": "\n",
        "time": _clock(now), "date": f"{now:%B} {now.day}, {now.year}", "weekday": f"{now:%A}",
        "isotime": f"{now:%H:%M}", "isodate": f"{now:%Y-%m-%d}",
        "idle_duration": _idle(now, context.idle_since),
        "lastmessage": _last(context.history, None), "lastusermessage": _last(context.history, "user"),
        "lastcharmessage": _last(context.history, "assistant"),
    }
    if name == "trim":
        return match.group(0)  # removed last, with the line breaks around it
    return values.get(name, match.group(0))


_ACTIVE: ContextVar[MacroContext | None] = ContextVar("personae_macro_context", default=None)


@contextmanager
def active(context: MacroContext):
    """Use this context (time, group, history, seed) for every render() inside the block."""
    token = _ACTIVE.set(context)
    try:
        yield context
    finally:
        _ACTIVE.reset(token)


def render(text: str, char: str, user: str) -> str:
    """expand() with the active context (or a fresh one), for this character and user."""
    context = _ACTIVE.get() or MacroContext()
    return expand(text, replace(context, char=char, user=user))

"""What a card may hold: sizes, depths and characters checked at import, so no card can cripple chat."""

from __future__ import annotations

import json
import math
import re

from runtime.errors import PersonaeError

MAX_CARD_FILE_BYTES = 32 * 1024 * 1024  # a PNG card with a large avatar; anything bigger is not a card
MAX_CARD_JSON_BYTES = 4 * 1024 * 1024  # the card's own JSON (a 10 MB description is refused)
MAX_NAME_CHARS = 128
MAX_TEXT_CHARS = 100_000  # one text field; real descriptions are a few thousand characters
MAX_LIST_ITEMS = 200  # alternate greetings, tags, stop strings
MAX_LORE_ENTRIES = 2_000
MAX_LORE_KEYS = 100  # keys per entry
MAX_KEY_CHARS = 200
MAX_DEPTH = 64  # nesting of objects and lists anywhere in the card
MAX_ID_CHARS = 100  # ids name files: 100 bytes of [a-z0-9-] is safe on every file system
MAX_NEW_TOKENS = 8_192
NUMBER_RANGES = {"temperature": (0.0, 5.0), "top_p": (0.0, 1.0), "repetition_penalty": (0.0, 5.0),
                 "min_p": (0.0, 1.0), "top_k": (-1, 100_000), "repeat_last_n": (-1, 100_000),
                 "frequency_penalty": (-2.0, 2.0), "presence_penalty": (-2.0, 2.0)}
INCLUSIVE = {"temperature", "min_p", "top_k", "repeat_last_n", "frequency_penalty", "presence_penalty"}
WHOLE = {"top_k", "repeat_last_n"}
MAX_AVATAR_PIXELS = 4096 * 4096  # larger images are refused: a 9,500 x 9,500 bomb never gets decoded
AVATAR_SIDE = 1024  # avatars larger than this on a side are downscaled at import

_SURROGATE = re.compile("[\ud800-\udfff]")
# Control characters (NUL, ESC, ...) and bidirectional overrides (RTL tricks) have no place in a name.
_NAME_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """Text safe for a terminal: control characters (escape codes) and bidi overrides shown escaped."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))


def text_problem(value: str, limit: int = MAX_TEXT_CHARS) -> str | None:
    """Why a text from a card cannot be kept (too long, a lone surrogate), or None."""
    if len(value) > limit:
        return f"has {len(value)} characters, more than the limit of {limit} — shorten it"
    if _SURROGATE.search(value):
        return "contains a lone surrogate (broken UTF-16) — save the card again as UTF-8"
    return None


def name_problem(name: str) -> str | None:
    """Why a name cannot be a character's name, or None."""
    problem = text_problem(name, MAX_NAME_CHARS)
    if problem:
        return problem
    bad = _NAME_FORBIDDEN.search(name)
    if bad:
        return (f"contains the control character {bad.group()!a} — names may not hold control, "
                "escape or text-direction characters")
    return None


def number_problem(key: str, value) -> str | None:
    """Why a generation setting is not usable (NaN, infinite, out of range), or None."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if key == "max_new_tokens":
        if not (isinstance(value, int) and not isinstance(value, bool)) and not (
                isinstance(value, float) and value.is_integer()):
            return f"must be a whole number between 1 and {MAX_NEW_TOKENS}, got {_short(value)} — e.g. 200"
        if not 1 <= value <= MAX_NEW_TOKENS:
            return f"must be a whole number between 1 and {MAX_NEW_TOKENS}, got {_short(value)} — e.g. 200"
        return None
    if not number:
        return f"must be a number, got {_short(value)} — e.g. 0.8"
    if not math.isfinite(value):
        return f"must be a finite number, got {_short(value)} — e.g. 0.8"
    low, high = NUMBER_RANGES[key]
    if key in WHOLE and value != int(value):
        return f"must be a whole number, got {_short(value)} — e.g. 40"
    if key in INCLUSIVE and not low <= value <= high:
        return f"must be between {low:g} and {high:g}, got {_short(value)} — e.g. 0.8"
    if key not in INCLUSIVE and not low < value <= high:
        return f"must be above {low:g} and at most {high:g}, got {_short(value)}"
    return None


def _short(value) -> str:
    """A value for an error message, never thousands of digits long."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**30:
        return f"a number of {len(str(abs(value))) if value.bit_length() < 14_000 else 'thousands of'} digits"
    return f"{value!r:.30}"


def too_deep(value, limit: int = MAX_DEPTH) -> bool:
    """True if objects/lists nest deeper than `limit` (iterative: deep input cannot exhaust the stack)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


class JSONProblem(PersonaeError, ValueError):
    """Card JSON that parses to something no card may hold; the message says what (load_card makes it a CardError)."""


def _no_constant(name: str):
    raise JSONProblem(f"{name} is not a JSON number — use a finite number")


def loads(text: str | bytes):
    """json.loads for card JSON: no NaN/Infinity, no depth beyond MAX_DEPTH, no 5,000-digit numbers."""
    if len(text) > MAX_CARD_JSON_BYTES:
        raise JSONProblem(f"the card's JSON is {len(text)} bytes, more than the limit of {MAX_CARD_JSON_BYTES}")
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise JSONProblem(f"objects or lists nest deeper than the limit of {MAX_DEPTH}") from None
    except json.JSONDecodeError:
        raise
    except ValueError as error:  # Python's int-string limit: integers of thousands of digits
        if isinstance(error, JSONProblem):
            raise
        raise JSONProblem(f"{error}".split(";")[0]) from None
    if too_deep(value):
        raise JSONProblem(f"objects or lists nest deeper than the limit of {MAX_DEPTH}")
    return value

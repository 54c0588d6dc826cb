"""A voice's surface: casing, punctuation, emoji, sentence length, person, and the card's own words."""

from __future__ import annotations

import math
import re

_WORD = re.compile(r"[A-Za-z][A-Za-z'’]*")
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?…])\s+|\n+")
_EMOJI = re.compile(r"[\U0001F300-\U0001FAFF\u2600-\u27BF\u2B50\u2764]")
_CONTRACTION = re.compile(r"\b\w+(?:'|’)(?:m|s|re|ve|ll|d|t)\b", re.I)
_FIRST = re.compile(r"\b(?:i|me|my|mine|myself|i'm|i've|i'll|i'd)\b", re.I)
_SECOND = re.compile(r"\b(?:you|your|yours|ye|thee|thou|thy|u|ya|yer)\b", re.I)
_LIST = re.compile(r"(?:^|\n)\s*(?:\d+[.)]|[-*•])\s+\S")
# How an encyclopedia or an explainer talks: definitions, hedged generalities, dates, "such as".
_ENCYCLOPEDIC = [
    r"\b(?:is|are|was|were) (?:a|an|the) (?:\w+ ){0,3}(?:that|which|of|in|used|designed|where|for|by)\b",
    r"\brefers? to\b", r"\bis the (?:process|rate|study|branch|practice|craft)\b", r"\bknown (?:as|for)\b",
    r"\btypically\b", r"\bsuch as\b", r"\bincluding\b", r"\bprimarily\b", r"\bapproximately\b",
    r"\b(?:generally|commonly|often) (?:regarded|used|depicted|defined|associated)\b", r"\bconsists? of\b",
    r"\b(?:in|from|since|by) (?:the )?(?:1[0-9]\d\d|20\d\d|\d{1,2}(?:st|nd|rd|th) century)\b",
    r"\b(?:centuries|millions of years|the earth|organisms?|individuals?|processes)\b",
    r"\bwhich (?:is|are|can|allows?|helps?)\b", r"\ballows? (?:\w+ )?to\b", r"\b(?:a|the) key part of\b",
    r"\bit (?:is|'s) important to\b", r"\bhere(?:'s| is| are) (?:a|an|some|the|how)\b",
    r"\b(?:additionally|furthermore|moreover|however),", r"\bresearch shows\b",
]
_ENCYCLOPEDIC_RE = [re.compile(p, re.I) for p in _ENCYCLOPEDIC]
# Words too common to say anything about one voice.
STOPWORDS = set("""a an the and or but if of to in on at by for with from as is are was were be been being am do does
did have has had it its it's this that these those there here what which who whom whose when where why how all any both
each few more most other some such no nor not only own same so than too very can will just should now i me my myself
we our you your he him his she her they them their then also into over out up down off about again once because while
until before after above below between through during under further one two get got would could may might must shall
like well yes oh let let's i'm you're it's that's don't can't won't i'll i've i'd""".split())

FEATURES = ("lower_start", "caps", "exclaim", "question", "emoji", "contractions", "sentence_words", "word_chars",
            "end_period", "first_person", "second_person", "action", "hashtag", "commas")


def sentences(text: str) -> list[str]:
    """The sentences (and lines) of a text that have a letter in them."""
    return [s.strip() for s in _SENTENCE_SPLIT.split(text) if re.search(r"[A-Za-z]", s)]


def words(text: str) -> list[str]:
    """Lower-cased words."""
    return [w.lower().replace("’", "'") for w in _WORD.findall(text)]


def style_vector(text: str) -> dict:
    """Surface features of one text, each roughly on a 0..2 scale."""
    found = _WORD.findall(text)
    n_words = max(1, len(found))
    parts = sentences(text) or [text]
    n = max(1, len(parts))
    starts = [s.lstrip("\"'*(“‘ ")[:1] for s in parts]
    letters = [c for c in starts if c.isalpha()]
    return {
        "lower_start": sum(c.islower() for c in letters) / max(1, len(letters)),
        "caps": min(1.0, 3 * sum(1 for w in found if len(w) > 1 and w.isupper()) / n_words),
        "exclaim": min(2.0, text.count("!") / n),
        "question": min(1.5, text.count("?") / n),
        "emoji": min(2.0, len(_EMOJI.findall(text)) / n),
        "contractions": min(1.0, 8 * len(_CONTRACTION.findall(text)) / n_words),
        "sentence_words": math.log(max(1.0, n_words / n)) / 2,
        "word_chars": (sum(len(w) for w in found) / n_words - 3) / 2,
        "end_period": sum(1 for s in parts if s.rstrip("\"')”’*").endswith(".")) / n,
        "first_person": min(1.0, 6 * len(_FIRST.findall(text)) / n_words),
        "second_person": min(1.0, 6 * len(_SECOND.findall(text)) / n_words),
        "action": 1.0 if re.search(r"\*[^*\n]{2,}\*", text) else 0.0,
        "hashtag": 1.0 if re.search(r"(?:^|\s)#\w", text) else 0.0,
        "commas": min(1.0, 5 * text.count(",") / n_words),
    }


def profile(texts: list[str]) -> tuple[list[float], list[float]]:
    """Mean and spread of each feature over a voice's texts (the spread never below a floor)."""
    rows = [style_vector(t) for t in texts if t.strip()] or [style_vector("")]
    means = [sum(r[k] for r in rows) / len(rows) for k in FEATURES]
    spreads = []
    for k, mean in zip(FEATURES, means):
        var = sum((r[k] - mean) ** 2 for r in rows) / len(rows)
        spreads.append(max(0.15, math.sqrt(var)))  # a handful of lines under-states how a voice varies
    return means, spreads


def distance(vector: dict, voice: tuple[list[float], list[float]]) -> float:
    """How many spreads away from a voice a text's style is, averaged over features (0 = typical)."""
    means, spreads = voice
    gaps = [min(4.0, abs(vector[k] - m) / s) for k, m, s in zip(FEATURES, means, spreads)]
    return math.sqrt(sum(g * g for g in gaps) / len(gaps))


def markers(own: list[str], plain: list[str], card_text: str = "") -> set[str]:
    """The card's verbal habits: words quoted in its description, or recurring in its own lines.

    Names and other proper nouns are topic, not voice (a flat reply about Biscuit the dog still names
    Biscuit), so words written capitalised mid-sentence are left out, as is anything plain text says.
    """
    common = STOPWORDS | {w for t in plain for w in words(t)}
    proper = {w.lower() for t in own + [card_text] for w in re.findall(r"(?<=[a-z,;] )([A-Z][a-z]+)", t)}
    quoted = {w for q in re.findall(r"['‘\"“]([^'’\"”]{1,40})['’\"”]", card_text) for w in words(q)}
    counts: dict[str, int] = {}
    for text in own:
        for word in set(words(text)):
            counts[word] = counts.get(word, 0) + 1
    recurring = {w for w, c in counts.items() if c >= 2}
    return {w for w in recurring | quoted if w not in common and w not in proper}


def marker_rate(text: str, card_words: set[str]) -> float:
    """Share of a reply's content words that are the card's own distinctive words."""
    content = [w for w in words(text) if w not in STOPWORDS]
    if not content:
        return 0.0
    return sum(1 for w in content if w in card_words) / math.sqrt(len(content))


def encyclopedic(text: str) -> float:
    """Explainer phrasing per sentence: definitions, generalities, dates, 'such as'."""
    hits = sum(len(p.findall(text)) for p in _ENCYCLOPEDIC_RE)
    return min(2.0, hits / max(1, len(sentences(text))))


def list_shaped(text: str) -> float:
    """1 when the reply is a bulleted or numbered list."""
    return 1.0 if len(_LIST.findall(text)) >= 2 else 0.0



# Habits a voice either has or never has: a reply with one the card's lines and description never show is a slip.
_NETSPEAK = re.compile(r"\b(?:lol|lmao|lmfao|rofl|omg|tbh|ngl|smh|idk|imo|btw|fr|rn)\b", re.I)
HABITS = {"emoji": lambda t: bool(_EMOJI.search(t)), "hashtags": lambda t: bool(re.search(r"(?:^|\s)#[A-Za-z]\w", t)),
          "internet slang": lambda t: bool(_NETSPEAK.search(t))}
_HABIT_WORDS = {"emoji": r"\bemoji", "hashtags": r"\bhashtag", "internet slang": r"\binternet slang\b|\btext(?:s|ing|speak)\b"}


def habits(text: str) -> set[str]:
    """Which of the on-off habits (emoji, hashtags, internet slang) a text shows."""
    return {name for name, found in HABITS.items() if found(text)}


def card_habits(lines: list[str], description: str = "") -> set[str]:
    """The on-off habits a card gives its character: shown in its own lines, or named in its description."""
    shown = set().union(*(habits(t) for t in lines)) if lines else set()
    named = {name for name, word in _HABIT_WORDS.items() if re.search(word, description, re.I)}
    return shown | named | habits(description)

"""Personal data out of training text: e-mails, phones, Discord ids and mentions, secret-bearing URLs."""

from __future__ import annotations

import re
from collections import Counter

# Order matters: mentions before bare snowflakes, URLs before e-mails and phones (a URL may contain both).
_SECRET_WORDS = r"(?:token|key|api[_-]?key|apikey|secret|password|passwd|pwd|auth|access[_-]?token|sig|signature|session|sid|code)"
PATTERNS: list[tuple[str, re.Pattern, str]] = [
    ("discord_user", re.compile(r"<@!?\d{5,20}>"), "@user"),
    ("discord_role", re.compile(r"<@&\d{5,20}>"), "@role"),
    ("discord_channel", re.compile(r"<#\d{5,20}>"), "#channel"),
    (
        "secret_url",
        re.compile(
            r"\b(?:https?|wss?|ftp)://[^\s<>\"']*?"
            # a secret in the query (?token=...), or a long opaque path segment (webhooks, invite keys)
            rf"(?:[?&#;]{_SECRET_WORDS}[^=\s]*=[^\s&<>\"']+|/[A-Za-z0-9_\-]{{24,}})[^\s<>\"']*",
            re.IGNORECASE,
        ),
        "[URL]",
    ),
    ("url_credentials", re.compile(r"\b(?:https?|ftp)://[^\s/:@]+:[^\s/@]+@[^\s<>\"']+", re.IGNORECASE), "[URL]"),
    ("email", re.compile(r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}\b"), "[EMAIL]"),
    ("snowflake", re.compile(r"(?<!\d)\d{17,20}(?!\d)"), "[ID]"),
    (
        "phone",
        # +country code or a grouped local number with at least 8 digits; plain years and counts stay.
        re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.\-]?)?(?:\(\d{1,4}\)[\s.\-]?)?\d{2,4}(?:[\s.\-]\d{2,4}){1,4}(?![\w])"
                   r"|(?<![\w+])\+\d{8,15}(?!\d)"),
        "[PHONE]",
    ),
]


def _is_phone(match: re.Match) -> bool:
    """A grouped number with at least 8 digits (not a date like 2024-01-02 or a score like 10 20 30)."""
    digits = re.sub(r"\D", "", match.group(0))
    if len(digits) < 8:
        return False
    return not re.fullmatch(r"\d{4}-\d{2}-\d{2}", match.group(0).strip())


def scrub(text: str) -> tuple[str, Counter]:
    """Replace personal data in text with placeholders; return the text and what was replaced, by kind."""
    counts: Counter = Counter()
    for kind, pattern, placeholder in PATTERNS:
        def replace(match, kind=kind, placeholder=placeholder):
            if kind == "phone" and not _is_phone(match):
                return match.group(0)
            counts[kind] += 1
            return placeholder

        text = pattern.sub(replace, text)
    return text, counts

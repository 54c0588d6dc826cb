"""Split a long reply into Discord-sized messages on paragraph and sentence boundaries."""

from __future__ import annotations

import re

DISCORD_LIMIT = 2000

# A fenced code block, closed or (while a reply is still streaming) running to the end.
_FENCE = re.compile(r"```[^\n`]*\n.*?(?:```|\Z)", re.DOTALL)
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")


def _segments(text: str) -> list[tuple[str, bool]]:
    """Paragraphs and whole code blocks in order, as (text, is_code)."""
    out: list[tuple[str, bool]] = []
    position = 0
    for match in _FENCE.finditer(text):
        out.extend((p, False) for p in _paragraphs(text[position:match.start()]))
        out.append((match.group(0).strip("\n"), True))
        position = match.end()
    out.extend((p, False) for p in _paragraphs(text[position:]))
    return out


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


def _pack(pieces: list[str], limit: int, joiner: str) -> list[str]:
    """Greedily join pieces (each already within the limit) into chunks of at most `limit`."""
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        candidate = f"{current}{joiner}{piece}" if current else piece
        if len(candidate) <= limit:
            current = candidate
        else:
            if current:
                chunks.append(current)
            current = piece
    if current:
        chunks.append(current)
    return chunks


def _split_words(text: str, limit: int) -> list[str]:
    """Split on whitespace; a single word longer than the limit is cut."""
    words: list[str] = []
    for word in text.split():
        while len(word) > limit:
            words.append(word[:limit])
            word = word[limit:]
        if word:
            words.append(word)
    return _pack(words, limit, " ")


def _split_prose(paragraph: str, limit: int) -> list[str]:
    """A paragraph over the limit: sentences first, then words."""
    pieces: list[str] = []
    for sentence in _SENTENCE_END.split(paragraph):
        pieces.extend([sentence] if len(sentence) <= limit else _split_words(sentence, limit))
    return _pack(pieces, limit, " ")


def _split_code(block: str, limit: int) -> list[str]:
    """A code block over the limit: several fenced blocks cut between lines, same language."""
    first, _, rest = block.partition("\n")
    body = rest[:-3] if rest.endswith("```") else rest
    opening, closing = first + "\n", "\n```"
    room = limit - len(opening) - len(closing)
    lines: list[str] = []
    for line in body.rstrip("\n").split("\n"):
        while len(line) > room:
            lines.append(line[:room])
            line = line[room:]
        lines.append(line)
    return [opening + chunk + closing for chunk in _pack(lines, room, "\n")]


def split_message(text: str, limit: int = DISCORD_LIMIT) -> list[str]:
    """Cut text into chunks of at most `limit` chars: whole paragraphs, then sentences, then words.

    A code block stays whole in one chunk whenever it fits in one; a longer one is cut
    between lines into several fenced blocks, so no chunk has an unclosed fence.
    """
    if limit < 20:
        raise ValueError("limit must be at least 20 characters")
    text = text.strip()
    if not text:
        return []
    if len(text) <= limit:
        return [text]
    pieces: list[str] = []
    for segment, is_code in _segments(text):
        if len(segment) <= limit:
            pieces.append(segment)
        elif is_code:
            pieces.extend(_split_code(segment, limit))
        else:
            pieces.extend(_split_prose(segment, limit))
    return _pack(pieces, limit, "\n\n")

"""Splitting long replies into Discord messages: paragraphs, sentences, words, whole code blocks."""

from __future__ import annotations

import random
import re

import pytest

from plugins.discord.splitting import DISCORD_LIMIT, split_message


def words(text: str) -> list[str]:
    """The words of a text without code fences, to check nothing was lost or reordered."""
    return [w for w in re.sub(r"```\w*", " ", text).split() if w]


def characters(text: str) -> str:
    """The visible characters of a text without code fences (long code lines may be cut anywhere)."""
    return re.sub(r"```\w*|\s", "", text)


def fences_balanced(chunk: str) -> bool:
    return chunk.count("```") % 2 == 0


def test_short_and_empty_text():
    assert split_message("Hello there.") == ["Hello there."]
    assert split_message("  \n\n ") == []
    assert split_message("x" * DISCORD_LIMIT) == ["x" * DISCORD_LIMIT]


def test_paragraphs_are_packed_and_never_cut():
    paragraphs = [f"Paragraph {i}. " + "word " * 60 for i in range(30)]
    text = "\n\n".join(p.strip() for p in paragraphs)
    chunks = split_message(text)
    assert len(chunks) > 1 and all(len(c) <= DISCORD_LIMIT for c in chunks)
    for chunk in chunks:  # every chunk holds whole paragraphs
        for part in chunk.split("\n\n"):
            assert part.startswith("Paragraph ") and part.endswith("word")
    assert words("\n\n".join(chunks)) == words(text)
    # Greedy packing: no two neighbours would have fitted together.
    assert all(len(a) + 2 + len(b) > DISCORD_LIMIT for a, b in zip(chunks, chunks[1:]))


def test_long_paragraph_splits_between_sentences():
    sentences = [f"Sentence number {i} says something a little long-winded about the sea!" for i in range(80)]
    text = " ".join(sentences)
    chunks = split_message(text, limit=500)
    assert len(chunks) > 1 and all(len(c) <= 500 for c in chunks)
    assert all(c.endswith("!") for c in chunks)
    assert all(c.startswith("Sentence number") for c in chunks)
    assert words(" ".join(chunks)) == words(text)


def test_sentence_longer_than_limit_splits_between_words_and_huge_words_are_cut():
    text = "a" * 130 + " " + "b " * 100
    chunks = split_message(text, limit=50)
    assert all(len(c) <= 50 for c in chunks)
    assert chunks[:2] == ["a" * 50, "a" * 50] and chunks[2].startswith("a" * 30 + " b b")
    assert "".join(chunks).replace(" ", "") == "a" * 130 + "b" * 100


def test_code_block_is_kept_whole_when_it_fits():
    code = "```python\n" + "\n".join(f"print({i})  # line {i}" for i in range(60)) + "\n```"
    text = "Intro paragraph. " * 50 + "\n\n" + code + "\n\nAfterwards, more words. " + "Tail. " * 100
    assert len(text) > DISCORD_LIMIT
    chunks = split_message(text)
    holding = [c for c in chunks if "```python" in c]
    assert len(holding) == 1 and code in holding[0]
    assert all(fences_balanced(c) for c in chunks)
    assert all(len(c) <= DISCORD_LIMIT for c in chunks)


def test_code_block_longer_than_limit_becomes_several_fenced_blocks():
    lines = [f"let value_{i} = compute({i}, {i * 2});" for i in range(200)]
    text = "Here is the code:\n\n```rust\n" + "\n".join(lines) + "\n```\n\nThat's all."
    chunks = split_message(text)
    assert all(len(c) <= DISCORD_LIMIT for c in chunks)
    assert all(fences_balanced(c) for c in chunks)
    code_chunks = [c for c in chunks if "```rust" in c]
    assert len(code_chunks) >= 3
    # Cut between lines only: every code line arrives intact, once, in order.
    seen = [line for c in chunks for line in c.split("\n") if line.startswith("let ")]
    assert seen == lines
    assert chunks[0].startswith("Here is the code:") and chunks[-1].endswith("That's all.")


def test_unclosed_code_block_while_streaming():
    text = "Look:\n\n```js\n" + "\n".join(f"console.log({i});" for i in range(300))
    chunks = split_message(text)
    assert all(len(c) <= DISCORD_LIMIT and fences_balanced(c) for c in chunks)
    assert sum(c.count("console.log(") for c in chunks) == 300


@pytest.mark.parametrize("seed", range(8))
def test_random_texts_keep_every_word_within_the_limit(seed):
    rng = random.Random(seed)
    vocabulary = ["sea", "ship", "storm.", "why?", "yes!", "Captain", "a" * 40, "the", "harbour,", "…"]
    parts = []
    for _ in range(rng.randint(5, 40)):
        if rng.random() < 0.15:
            parts.append("```\n" + "\n".join(" ".join(rng.choices(vocabulary, k=rng.randint(1, 12)))
                                             for _ in range(rng.randint(1, 40))) + "\n```")
        else:
            parts.append(" ".join(rng.choices(vocabulary, k=rng.randint(1, 400))))
    text = "\n\n".join(parts)
    limit = rng.choice([100, 500, DISCORD_LIMIT])
    chunks = split_message(text, limit)
    assert all(0 < len(c) <= limit for c in chunks)
    assert all(fences_balanced(c) for c in chunks)
    assert characters("\n".join(chunks)) == characters(text)


def test_tiny_limit_is_refused():
    with pytest.raises(ValueError, match="at least 20"):
        split_message("hello", limit=5)

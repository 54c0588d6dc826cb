"""Prompt-assembly variants for the coherence bench: the runtime's layout against the ones it was chosen over.

Each layout is a function of the prompt's parts (runtime.characters.prompt.PromptParts) and the character's name
that returns the chat messages; `prompt_layout` puts one in place of PromptParts.messages for a block of replies.
The shipped layout ("turns") is the runtime's own method, untouched.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace


def transcript(parts, name: str) -> list[dict]:
    """The card's example dialogues as a "Name: line" transcript inside the system prompt (the old layout)."""
    lines = [f"{name if m['role'] == 'assistant' else 'User'}: {m['content']}" for block in parts.examples
             for m in block]
    card = parts.card + ("\n\nExample dialogue:\n" + "\n".join(lines) if lines else "")
    return _runtime(replace(parts, card=card, examples=[]))


def no_examples(parts, name: str) -> list[dict]:
    """The card without its example dialogues."""
    return _runtime(replace(parts, examples=[]))


def no_post_history(parts, name: str) -> list[dict]:
    """The card without its post-history instruction ("[Reply as {{char}}: ...]")."""
    return _runtime(replace(parts, post_history=""))


def plain(parts, name: str) -> list[dict]:
    """Description and personality only: no example dialogues, no post-history instruction."""
    return _runtime(replace(parts, examples=[], post_history=""))


LAYOUTS = {"card-transcript": transcript, "card-noexamples": no_examples, "card-nopost": no_post_history,
           "card-plain": plain}
_original = None


def _runtime(parts) -> list[dict]:
    return _original(parts)


@contextmanager
def prompt_layout(layout, name: str):
    """Within the block, every prompt is assembled by `layout` (None: the runtime's own)."""
    global _original
    from runtime.characters.prompt import PromptParts

    if layout is None:
        yield
        return
    _original = PromptParts.messages
    PromptParts.messages = lambda parts: layout(parts, name)
    try:
        yield
    finally:
        PromptParts.messages = _original

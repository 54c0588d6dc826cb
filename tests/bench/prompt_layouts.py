"""Prompt-assembly variants for the coherence bench: the runtime's layout against the ones it was chosen over.

Each layout is a function of the prompt's parts (runtime.characters.prompt.PromptParts), the character's name and
the runtime's own assembly (PromptParts.messages, unpatched) that returns the chat messages; `prompt_layout` puts
one in place of PromptParts.messages for a block of replies.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace


def transcript(parts, name: str, assemble) -> list[dict]:
    """The card's example dialogues as a "Name: line" transcript inside the system prompt (the old layout)."""
    lines = [f"{name if m['role'] == 'assistant' else 'User'}: {m['content']}" for block in parts.examples
             for m in block]
    card = parts.card + ("\n\nExample dialogue:\n" + "\n".join(lines) if lines else "")
    return assemble(replace(parts, card=card, examples=[]))


def no_examples(parts, name: str, assemble) -> list[dict]:
    """The card without its example dialogues."""
    return assemble(replace(parts, examples=[]))


def no_post_history(parts, name: str, assemble) -> list[dict]:
    """The card without its post-history instruction ("[Reply as {{char}}: ...]")."""
    return assemble(replace(parts, post_history=""))


def plain(parts, name: str, assemble) -> list[dict]:
    """Description and personality only: no example dialogues, no post-history instruction."""
    return assemble(replace(parts, examples=[], post_history=""))


LAYOUTS = {"card-transcript": transcript, "card-noexamples": no_examples, "card-nopost": no_post_history,
           "card-plain": plain}


@contextmanager
def prompt_layout(layout, name: str):
    """Within the block, every prompt is assembled by `layout` (None: the runtime's own)."""
    from runtime.characters.prompt import PromptParts

    if layout is None:
        yield
        return
    assemble = PromptParts.messages
    PromptParts.messages = lambda parts: layout(parts, name, assemble)
    try:
        yield
    finally:
        PromptParts.messages = assemble

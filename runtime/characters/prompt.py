"""Persona card + lorebook + history -> chat messages that fit the model's context budget."""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime.errors import PersonaeError

# How many recent messages are scanned for lorebook keywords when the card sets no scan_depth.
LORE_SCAN_MESSAGES = 4


class PromptTooSmall(PersonaeError, ValueError):
    """The prompt budget cannot hold even the card; the message says which setting to raise."""


@dataclass
class PromptParts:
    """The pieces of a prompt, in the order they are given up when the budget is short."""

    card: str
    lore: list[str] = field(default_factory=list)
    examples: list[list[dict]] = field(default_factory=list)  # example dialogues as user/assistant turns
    history: list[dict] = field(default_factory=list)
    post_history: str = ""

    def messages(self) -> list[dict]:
        """The chat messages these parts make.

        Measured on SmolLM2-135M (README, "Replies that stay coherent"): example dialogues as real
        chat turns keep the voice, where a "Name: line" transcript inside the system prompt got copied
        as transcript lines; the post-history instruction at the end of the system prompt, where a
        system message after the user's turn was read back verbatim as the reply.
        """
        # What never changes for a character comes first (card, examples), the triggered lore after it:
        # chats with one character then share the longest prompt prefix, which the generator prefills once.
        system = self.card + (f"\n\n{self.post_history}" if self.post_history else "")
        messages = [{"role": "system", "content": system}]
        # Marked, so hooks and tools can tell the card's example turns from the chat (templates ignore the key).
        messages += [{**m, "example": True} for block in self.examples for m in block]
        if self.lore:
            messages.append({"role": "system", "content": "What you know:\n" + "\n".join(self.lore)})
        return messages + self.history


def count_tokens(tokenizer, messages: list[dict]) -> int:
    """Tokens the chat template makes of these messages, with the reply prompt."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # some tokenizers return a BatchEncoding
        ids = ids["input_ids"]
    return len(ids)


def _fits(tokenizer, parts: PromptParts, budget: int) -> bool:
    return count_tokens(tokenizer, _safe_messages(tokenizer, parts)) <= budget


def _safe_messages(tokenizer, parts: PromptParts) -> list[dict]:
    """Messages, with the lore folded into the system prompt if the template refuses a second system message."""
    messages = parts.messages()
    if parts.lore:
        try:
            tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception:  # templates that allow only one leading system message
            lore = "\n\nWhat you know:\n" + "\n".join(parts.lore)
            folded = PromptParts(parts.card + lore, [], parts.examples, parts.history, parts.post_history)
            return folded.messages()
    return messages


def _truncate_tokens(tokenizer, text: str, keep: int, from_start: bool) -> str:
    """Keep `keep` tokens of a text, from its start or its end."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    kept = ids[:keep] if from_start else ids[-keep:] if keep > 0 else []
    return tokenizer.decode(kept)


def build_messages(character, history: list[dict], tokenizer, budget: int, user: str = "User") -> list[dict]:
    """Chat messages for the next reply: never over `budget` tokens.

    `history` holds role/content dicts, oldest first, ending with the user's new message. When the
    budget is short, the oldest history goes first, then example dialogues, then lorebook entries,
    and only then is the card itself shortened.
    """
    if budget < 16:
        raise PromptTooSmall(f"a prompt budget of {budget} tokens is too small; raise context_tokens")
    history = [{"role": m["role"], "content": m["content"]} for m in history]
    # The card's own scan_depth (applied by triggered_lore) can narrow this further.
    recent_texts = [m["content"] for m in history[-LORE_SCAN_MESSAGES:]]
    parts = PromptParts(
        card=character.system_text(user),
        lore=[character.render(entry.content, user) for entry in character.triggered_lore(recent_texts)],
        examples=character.example_dialogues(user),
        history=history,
        post_history=character.post_history(user),
    )
    # Give things up in order until the prompt fits: old history, examples, lore, then the card.
    while not _fits(tokenizer, parts, budget) and len(parts.history) > 1:
        parts.history.pop(0)
        # A history must start with the user speaking for most chat templates.
        while len(parts.history) > 1 and parts.history[0]["role"] != "user":
            parts.history.pop(0)
    while not _fits(tokenizer, parts, budget) and parts.examples:
        parts.examples.pop()
    while not _fits(tokenizer, parts, budget) and parts.lore:
        parts.lore.pop()
    if not _fits(tokenizer, parts, budget) and parts.post_history:
        parts.post_history = ""
    if not _fits(tokenizer, parts, budget):
        # Shorten the card, then (last resort) the start of the user's own message.
        overflow = count_tokens(tokenizer, _safe_messages(tokenizer, parts)) - budget
        card_tokens = len(tokenizer(parts.card, add_special_tokens=False)["input_ids"])
        parts.card = _truncate_tokens(tokenizer, parts.card, max(card_tokens - overflow - 8, 8), from_start=True)
    while not _fits(tokenizer, parts, budget):
        last = parts.history[-1]
        tokens = len(tokenizer(last["content"], add_special_tokens=False)["input_ids"])
        overflow = count_tokens(tokenizer, _safe_messages(tokenizer, parts)) - budget
        if tokens <= 1:
            raise PromptTooSmall(f"cannot fit even an empty prompt into {budget} tokens; raise context_tokens")
        last["content"] = _truncate_tokens(tokenizer, last["content"], max(tokens - overflow - 4, 1), from_start=False)
    return _safe_messages(tokenizer, parts)

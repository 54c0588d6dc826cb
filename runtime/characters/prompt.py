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
    examples: list[str] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    post_history: str = ""

    def messages(self) -> list[dict]:
        """The chat messages these parts make."""
        # The parts that never change for a character come first, the triggered lore after them: chats
        # with one character then share the longest prompt prefix, which the generator prefills once.
        system = self.card
        if self.examples:
            system += "\n\nExamples of how you talk:\n" + "\n\n".join(self.examples)
        if self.lore:
            system += "\n\nWhat you know:\n" + "\n".join(self.lore)
        messages = [{"role": "system", "content": system}, *self.history]
        if self.post_history:
            messages.append({"role": "system", "content": self.post_history})
        return messages


def example_text(block: list[dict], character_name: str, user: str) -> str:
    """One example dialogue as a transcript."""
    lines = []
    for message in block:
        speaker = character_name if message["role"] == "assistant" else user
        lines.append(f"{speaker}: {message['content']}")
    return "\n".join(lines)


def count_tokens(tokenizer, messages: list[dict]) -> int:
    """Tokens the chat template makes of these messages, with the reply prompt."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # some tokenizers return a BatchEncoding
        ids = ids["input_ids"]
    return len(ids)


def _fits(tokenizer, parts: PromptParts, budget: int) -> bool:
    return count_tokens(tokenizer, _safe_messages(tokenizer, parts)) <= budget


def _safe_messages(tokenizer, parts: PromptParts) -> list[dict]:
    """Messages, with post-history instructions folded into the system prompt if the template refuses them."""
    messages = parts.messages()
    if parts.post_history:
        try:
            tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception:  # templates that allow only one leading system message
            folded = PromptParts(parts.card + "\n\n" + parts.post_history, parts.lore, parts.examples, parts.history)
            return folded.messages()
    return messages


def _truncate_tokens(tokenizer, text: str, keep: int, from_start: bool) -> str:
    """Keep `keep` tokens of a text, from its start or its end."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    kept = ids[:keep] if from_start else ids[-keep:] if keep > 0 else []
    return tokenizer.decode(kept)


def _with(parts: PromptParts, **changes) -> PromptParts:
    """A copy of the parts with some replaced (the lists themselves are not copied)."""
    values = {"card": parts.card, "lore": parts.lore, "examples": parts.examples, "history": parts.history,
              "post_history": parts.post_history, **changes}
    return PromptParts(**values)


def _most_kept(count: int, fits) -> int:
    """The largest k in [0, count] with fits(k), fits being monotone (fewer items never cost more)."""
    low, high = 0, count  # fits(low) is assumed (keeping nothing is the last resort anyway)
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


def _trim_history(tokenizer, parts: PromptParts, budget: int) -> None:
    """Drop the oldest history so the prompt fits, starting on a user message; always keep the last.

    Every message is tokenized once (in one batch) to estimate where to cut, then a couple of exact
    counts confirm it, with a binary search over the possible cuts if the estimate was off.
    """
    history = parts.history
    if len(history) <= 1:
        return
    # A history must start with the user speaking for most chat templates; the last message always stays.
    starts = [i for i, m in enumerate(history[:-1]) if i > 0 and m["role"] == "user"] + [len(history) - 1]

    def fits_from(index: int) -> bool:
        return _fits(tokenizer, _with(parts, history=history[starts[index]:]), budget)

    lengths = [len(ids) for ids in tokenizer([m["content"] for m in history], add_special_tokens=False)["input_ids"]]
    total = count_tokens(tokenizer, _safe_messages(tokenizer, parts))
    last_only = count_tokens(tokenizer, _safe_messages(tokenizer, _with(parts, history=history[-1:])))
    # The chat template's own tokens per message, averaged over this history.
    per_message = max(0.0, (total - last_only - sum(lengths[:-1])) / (len(history) - 1))
    dropped, guess, excess = 0.0, len(starts) - 1, total - budget
    for index, start in enumerate(starts):
        previous = starts[index - 1] if index else 0
        dropped += sum(lengths[previous:start]) + per_message * (start - previous)
        if dropped >= excess:
            guess = index
            break
    if fits_from(guess):
        low, high = (0, guess) if guess > 0 and fits_from(guess - 1) else (guess, guess)
    else:
        low, high = min(guess + 1, len(starts) - 1), len(starts) - 1
    # The first cut that fits in [low, high] (the last cut is the answer when none does).
    while low < high:
        middle = (low + high) // 2
        if fits_from(middle):
            high = middle
        else:
            low = middle + 1
    parts.history = history[starts[low]:]


def build_messages(character, history: list[dict], tokenizer, budget: int, user: str = "User") -> list[dict]:
    """Chat messages for the next reply: never over `budget` tokens.

    `history` holds role/content dicts, oldest first, ending with the user's new message. When the
    budget is short, the oldest history goes first, then example dialogues, then lorebook entries,
    and only then is the card itself shortened.
    """
    if budget < 16:
        raise PromptTooSmall(f"a prompt budget of {budget} tokens is too small; raise context_tokens")
    # Every message costs at least one token, so no more than `budget` of them can ever fit.
    cut = len(history) > budget
    history = [{"role": m["role"], "content": m["content"]} for m in history[-budget:]]
    while cut and len(history) > 1 and history[0]["role"] != "user":
        history.pop(0)  # a cut history starts with the user speaking, as _trim_history's do
    # The card's own scan_depth (applied by triggered_lore) can narrow this further.
    recent_texts = [m["content"] for m in history[-LORE_SCAN_MESSAGES:]]
    parts = PromptParts(
        card=character.system_text(user),
        lore=[character.render(entry.content, user) for entry in character.triggered_lore(recent_texts)],
        examples=[example_text(block, character.name, user) for block in character.example_dialogues(user)],
        history=history,
        post_history=character.post_history(user),
    )
    # Give things up in order until the prompt fits: old history, examples, lore, then the card.
    # Each step finds how much to keep with a few whole-prompt counts, never one count per item
    # dropped: that was quadratic (800 messages took 5.4 s).
    if not _fits(tokenizer, parts, budget):
        _trim_history(tokenizer, parts, budget)
    if not _fits(tokenizer, parts, budget):
        parts.examples = parts.examples[:_most_kept(len(parts.examples), lambda k: _fits(
            tokenizer, _with(parts, examples=parts.examples[:k]), budget))]
    if not _fits(tokenizer, parts, budget):
        parts.lore = parts.lore[:_most_kept(len(parts.lore), lambda k: _fits(
            tokenizer, _with(parts, lore=parts.lore[:k]), budget))]
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

"""Persona card + lorebook + history -> chat messages that fit the model's context budget."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

from runtime.characters import lorebook, macros
from runtime.characters.lorebook import AFTER, AN_BOTTOM, AN_TOP, AT_DEPTH, BEFORE, EM_BOTTOM, EM_TOP, Injection
from runtime.errors import PersonaeError

# How many recent messages are scanned for lorebook keywords when the card sets no scan_depth.
LORE_SCAN_MESSAGES = 4
# SillyTavern's default world-info budget: a quarter of the prompt (the book's token_budget overrides it).
LORE_BUDGET_SHARE = 0.25
AUTHORS_NOTE_DEPTH = 4


class PromptTooSmall(PersonaeError, ValueError):
    """The prompt budget cannot hold even the card; the message says which setting to raise."""


@dataclass
class PromptParts:
    """The pieces of a prompt, in the order they are given up when the budget is short."""

    card: str
    lore: list = field(default_factory=list)  # Injections (a plain str is lore after the card), best first
    examples: list[list[dict]] = field(default_factory=list)  # example dialogues as user/assistant turns
    history: list[dict] = field(default_factory=list)
    post_history: str = ""
    card_head: int = 0  # where the card's instruction ends: lore placed before the character goes there
    authors_note: str = ""
    authors_note_depth: int = AUTHORS_NOTE_DEPTH
    addition: str = ""  # a platform's addition to the instructions (a channel's prompt): last in the system prompt

    def messages(self) -> list[dict]:
        """The chat messages these parts make.

        Measured on SmolLM2-135M (README, "Replies that stay coherent"): example dialogues as real
        chat turns keep the voice, where a "Name: line" transcript inside the system prompt got copied
        as transcript lines; the post-history instruction at the end of the system prompt, where a
        system message after the user's turn was read back verbatim as the reply.
        """
        lore = sorted((i if isinstance(i, Injection) else Injection(i, AFTER) for i in self.lore),
                      key=lambda i: i.order)
        placed = {p: [i.content for i in lore if i.position == p] for p in (BEFORE, AFTER, EM_TOP, EM_BOTTOM,
                                                                             AN_TOP, AN_BOTTOM)}
        # What never changes for a character comes first (card, examples), the triggered lore after it:
        # chats with one character then share the longest prompt prefix, which the generator prefills once.
        system = self.card
        if placed[BEFORE]:
            head = min(self.card_head, len(system))
            system = system[:head] + "\n\n" + "\n".join(placed[BEFORE]) + system[head:]
        if self.post_history:
            system += "\n\n" + self.post_history
        if self.addition:
            system += "\n\n" + self.addition
        messages = [{"role": "system", "content": system}]
        if placed[EM_TOP]:
            messages.append({"role": "system", "content": "\n".join(placed[EM_TOP])})
        # Marked, so hooks and tools can tell the card's example turns from the chat (templates ignore the key).
        messages += [{**m, "example": True} for block in self.examples for m in block]
        if placed[EM_BOTTOM]:
            messages.append({"role": "system", "content": "\n".join(placed[EM_BOTTOM])})
        if placed[AFTER]:
            messages.append({"role": "system", "content": "What you know:\n" + "\n".join(placed[AFTER])})
        in_chat = [i for i in lore if i.position == AT_DEPTH]
        note = "\n".join(placed[AN_TOP] + [self.authors_note.strip()] * bool(self.authors_note.strip())
                         + placed[AN_BOTTOM])
        if note:
            in_chat.append(Injection(note, AT_DEPTH, self.authors_note_depth, "system"))
        return messages + _at_depth(self.history, in_chat)


def _at_depth(history: list[dict], injections: list[Injection]) -> list[dict]:
    """History with in-chat injections: depth 0 after the last message, depth N before the last N."""
    out = list(history)
    groups: dict[tuple[int, int], list[str]] = {}
    for injection in injections:
        depth = min(injection.depth, len(history))
        groups.setdefault((depth, lorebook.ROLES.index(injection.role)), []).append(injection.content)
    # Deepest first, so the positions of the shallower ones are still counted from the end.
    for (depth, role), texts in sorted(groups.items(), key=lambda g: (-g[0][0], g[0][1])):
        out.insert(len(out) - depth, {"role": lorebook.ROLES[role], "content": "\n".join(texts)})
    return out


def count_tokens(tokenizer, messages: list[dict]) -> int:
    """Tokens the chat template makes of these messages, with the reply prompt."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # some tokenizers return a BatchEncoding
        ids = ids["input_ids"]
    return len(ids)


def _fits(tokenizer, parts: PromptParts, budget: int) -> bool:
    return count_tokens(tokenizer, _safe_messages(tokenizer, parts)) <= budget


def _safe_messages(tokenizer, parts: PromptParts) -> list[dict]:
    """Messages, with later system messages folded into the first if the template refuses them."""
    messages = parts.messages()
    if sum(m["role"] == "system" for m in messages) > 1:
        try:
            tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception:  # templates that allow only one leading system message
            # Everything but the lore placed before the character goes into the one system prompt.
            kept = [i for i in parts.lore if isinstance(i, Injection) and i.position == BEFORE]
            extra = [i.content if isinstance(i, Injection) else i for i in parts.lore
                     if not (isinstance(i, Injection) and i.position == BEFORE)]
            tail = "\n\n".join(t for t in ("\n".join(extra), parts.authors_note.strip(), parts.post_history) if t)
            folded = PromptParts(parts.card + ("\n\n" + tail if tail else ""), kept, parts.examples,
                                 parts.history, card_head=parts.card_head, addition=parts.addition)
            return folded.messages()
    return messages


def _truncate_tokens(tokenizer, text: str, keep: int, from_start: bool) -> str:
    """Keep `keep` tokens of a text, from its start or its end."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    kept = ids[:keep] if from_start else ids[-keep:] if keep > 0 else []
    return tokenizer.decode(kept)


def _with(parts: PromptParts, **changes) -> PromptParts:
    """A copy of the parts with some replaced (the lists themselves are not copied)."""
    return replace(parts, **changes)


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


def build_messages(character, history: list[dict], tokenizer, budget: int, user: str = "User", *,
                   group: list[str] | None = None, authors_note: str = "", seed: int | None = None,
                   now: datetime | None = None, idle_since: datetime | None = None,
                   recursive_lore: bool = False, authors_note_depth: int = AUTHORS_NOTE_DEPTH,
                   addition: str = "", generation: str = "normal") -> list[dict]:
    """Chat messages for the next reply: never over `budget` tokens.

    `history` holds role/content dicts, oldest first, ending with the user's new message. When the
    budget is short, the oldest history goes first, then example dialogues, then lorebook entries,
    and only then is the card itself shortened. `group` names every character in a group channel;
    `seed` makes {{random}}/{{roll}} and lore probabilities reproducible. `authors_note` goes in as a
    system message `authors_note_depth` messages from the end (SillyTavern's Author's Note); `addition`
    (a channel's prompt) joins the character's instructions and counts against the budget like the card.
    `generation` ("normal", "swipe" or "regenerate") is matched against lore entries' `triggers`.
    """
    if budget < 16:
        raise PromptTooSmall(f"a prompt budget of {budget} tokens is too small; raise context_tokens")
    # Every message costs at least one token, so no more than `budget` of them can ever fit.
    cut = len(history) > budget
    history = [{"role": m["role"], "content": m["content"]} for m in history[-budget:]]
    while cut and len(history) > 1 and history[0]["role"] != "user":
        history.pop(0)  # a cut history starts with the user speaking, as _trim_history's do
    context = macros.MacroContext(group=list(group or []), now=now, idle_since=idle_since, history=history,
                                  seed=seed)
    with macros.active(context):
        parts = _parts(character, history, tokenizer, budget, user, authors_note, seed, recursive_lore, context,
                       generation)
        parts.authors_note_depth = max(0, int(authors_note_depth))
        parts.addition = character.render(addition, user).strip() if addition.strip() else ""
        return _fit(parts, tokenizer, budget)


def _parts(character, history, tokenizer, budget, user, authors_note, seed, recursive_lore,
           context: macros.MacroContext, generation: str = "normal") -> PromptParts:
    """Every piece of the prompt, before any is given up."""
    def render(text):
        return character.render(text, user)

    def tokens(text):
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    # The card's own scan_depth and token_budget override these.
    settings = lorebook.ScanSettings(
        scan_depth=LORE_SCAN_MESSAGES, token_budget=max(int(budget * LORE_BUDGET_SHARE), 1),
        recursive=recursive_lore, seed=seed, assistant_turns=sum(m["role"] == "assistant" for m in history),
        prompt_points=[i + 1 for i, m in enumerate(history[:-1]) if m["role"] == "user"], generation=generation,
        character={character.name, character.id, character.display_name},
        greeting=opening_greeting(character, history, user))
    fired = lorebook.scan(character.character_book, [m["content"] for m in history], settings, render, tokens)
    lore = lorebook.injections(fired, render, chat_length=len(history))
    context.outlets.update(lorebook.outlets(fired, render))  # before the card is rendered: {{outlet::x}} is in it
    note = lorebook.depth_prompt(character.extensions, render)
    return PromptParts(
        card=character.system_text(user),
        lore=([note] if note else []) + lore,
        # A short-prompt card (its weights carry the persona) sends name and a line, no example dialogues.
        examples=[] if character.prompt_style == "short" else character.example_dialogues(user),
        history=history,
        post_history=character.post_history(user),
        card_head=len(character.instruction(user)),
        authors_note=render(authors_note),
    )


def opening_greeting(character, history: list[dict], user: str) -> int | None:
    """Which greeting the chat opened with (0: first_mes, 1: the first alternate, ...); None when not known."""
    if not history or history[0]["role"] != "assistant":
        return None
    opened = (history[0]["content"] or "").strip()
    texts = [character.first_mes, *character.alternate_greetings]
    return next((i for i, text in enumerate(texts) if text and character.render(text, user).strip() == opened), None)


def _fit(parts: PromptParts, tokenizer, budget: int) -> list[dict]:
    """Give parts up until the messages fit the budget."""
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

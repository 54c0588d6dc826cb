"""Prompt building: card, lore, examples, history; trimmed in order and never over budget."""

from __future__ import annotations

import pytest

from runtime.characters import parse_card
from runtime.characters.prompt import build_messages, count_tokens

CARD = {
    "spec": "chara_card_v2",
    "spec_version": "2.0",
    "data": {
        "name": "Brine",
        "description": "{{char}} is an old lighthouse keeper who talks to {{user}} about storms. " * 5,
        "personality": "gruff, kind",
        "scenario": "A stormy night.",
        "first_mes": "Evening, {{user}}.",
        "mes_example": "<START>\n{{user}}: Any ships?\n{{char}}: Two. Both lost.\n"
                       "<START>\n{{user}}: Tea?\n{{char}}: Always.",
        "creator_notes": "SECRET-CREATOR-NOTE",
        "system_prompt": "",
        "post_history_instructions": "Reply in under 40 words.",
        "alternate_greetings": [],
        "tags": [],
        "creator": "",
        "character_version": "",
        "extensions": {},
        "character_book": {"entries": [
            {"keys": ["kraken"], "content": "The kraken sleeps under the reef.", "enabled": True,
             "insertion_order": 0},
        ]},
    },
}


@pytest.fixture(scope="module")
def tokenizer(smollm2_folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_folder)


def history(n):
    turns = []
    for i in range(n):
        turns.append({"role": "user", "content": f"question number {i} about the weather and the sea"})
        turns.append({"role": "assistant", "content": f"answer number {i}: the sea is grey and cold tonight"})
    turns.append({"role": "user", "content": "Tell me about the kraken."})
    return turns


EXAMPLE_TURNS = [{"role": "user", "content": "Any ships?", "example": True},
                 {"role": "assistant", "content": "Two. Both lost.", "example": True},
                 {"role": "user", "content": "Tea?", "example": True},
                 {"role": "assistant", "content": "Always.", "example": True}]


def test_everything_fits_when_budget_is_ample(tokenizer):
    character = parse_card(CARD)
    messages = build_messages(character, history(2), tokenizer, 2000, user="Ann")
    system = messages[0]["content"]
    assert messages[0]["role"] == "system" and "Brine is an old lighthouse keeper who talks to Ann" in system
    assert system.endswith("Reply in under 40 words.")  # the post-history instruction closes the system prompt
    assert messages[1:5] == EXAMPLE_TURNS  # example dialogues as real turns, not a transcript
    assert messages[5] == {"role": "system", "content": "What you know:\nThe kraken sleeps under the reef."}
    assert messages[6:] == history(2)
    assert "SECRET-CREATOR-NOTE" not in str(messages)


@pytest.mark.parametrize("budget", [120, 160, 220, 300, 400, 600])
def test_never_over_budget_and_drops_in_order(tokenizer, budget):
    character = parse_card(CARD)
    messages = build_messages(character, history(20), tokenizer, budget, user="Ann")
    assert count_tokens(tokenizer, messages) <= budget
    # The user's newest message survives every trim.
    assert any("kraken" in m["content"] for m in messages if m["role"] == "user")
    system = messages[0]["content"]
    has_examples = messages[1:3] == EXAMPLE_TURNS[:2]
    kept_history = len([m for m in messages if m["role"] in ("user", "assistant")]) - 4 * has_examples
    if not has_examples:
        assert kept_history == 1  # examples go only once the old history is all gone
    if "lighthouse keeper" not in system:  # the card is cut only once examples and lore are gone
        assert not has_examples and "The kraken sleeps" not in str(messages)


def test_oldest_history_goes_first(tokenizer):
    character = parse_card(CARD)
    messages = build_messages(character, history(20), tokenizer, 700, user="Ann")
    chat = messages[1 + len(EXAMPLE_TURNS) + 1:]  # after the card, the example turns and the lore
    texts = [m["content"] for m in chat]
    assert "question number 0 about the weather and the sea" not in texts
    assert "answer number 19: the sea is grey and cold tonight" in texts
    assert chat[0]["role"] == "user"


def test_huge_user_message_is_cut_to_fit(tokenizer):
    character = parse_card(CARD)
    messages = build_messages(character, [{"role": "user", "content": "storm " * 3000}], tokenizer, 200)
    assert count_tokens(tokenizer, messages) <= 200


def test_prompts_of_one_character_share_everything_before_the_triggered_lore(tokenizer):
    character = parse_card(CARD)
    asks = [build_messages(character, [{"role": "user", "content": text}], tokenizer, 2000, user="Ann")
            for text in ("Any news of the kraken?", "Is the lamp lit?")]
    with_lore, without = (tokenizer.apply_chat_template(m, tokenize=True, return_dict=False) for m in asks)
    assert asks[0][1:5] == EXAMPLE_TURNS and asks[0][5]["content"].startswith("What you know")  # static parts first
    shared = next(i for i, (a, b) in enumerate(zip(with_lore, without)) if a != b)
    card_and_examples = len(tokenizer.apply_chat_template(asks[1][:5], tokenize=True, return_dict=False))
    assert shared >= card_and_examples - 3  # only the template's closing tokens can differ


def _reference_history(tokenizer, character, turns, budget):
    """The history the one-message-at-a-time trimming kept (the old, quadratic algorithm)."""
    from runtime.characters.prompt import PromptParts, _fits

    parts = PromptParts(card=character.system_text("Ann"), history=[dict(m) for m in turns],
                        post_history=character.post_history("Ann"))
    while not _fits(tokenizer, parts, budget) and len(parts.history) > 1:
        parts.history.pop(0)
        while len(parts.history) > 1 and parts.history[0]["role"] != "user":
            parts.history.pop(0)
    return parts.history


@pytest.mark.parametrize("budget", [90, 150, 260, 420, 700, 1200])
def test_trimming_keeps_what_dropping_one_at_a_time_kept(tokenizer, budget):
    # No lorebook, no examples: only the history is trimmed, so both ways must agree exactly.
    card = {**CARD, "data": {**CARD["data"], "mes_example": "", "character_book": None}}
    character = parse_card(card)
    turns = history(25)
    turns[7]["content"] = "a much longer question " * 30  # uneven lengths: the estimate is not exact
    messages = build_messages(character, turns, tokenizer, budget, user="Ann")
    kept = [m for m in messages if m["role"] in ("user", "assistant")]
    assert kept == _reference_history(tokenizer, character, turns, budget)
    assert count_tokens(tokenizer, messages) <= budget


def test_trimming_counts_the_prompt_a_few_times_not_once_per_message(tokenizer, monkeypatch):
    calls = []
    original = tokenizer.apply_chat_template

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(tokenizer, "apply_chat_template", counted)
    character = parse_card(CARD)
    counts = {}
    for n in (50, 400):  # 101 and 801 messages
        calls.clear()
        messages = build_messages(character, history(n), tokenizer, 300, user="Ann")
        counts[n] = len(calls)
        assert count_tokens(tokenizer, messages) <= 300 + 0 and messages[-1]["content"] == "Tell me about the kraken."
    # The old loop counted once per dropped message (800 here); now a binary search at most.
    assert counts[400] <= 2 * counts[50] and counts[400] < 60, counts


def test_a_thousand_constant_lore_entries_are_cut_by_the_budget_in_few_counts(tokenizer, monkeypatch):
    entries = [{"keys": [], "content": f"fact {i}: the reef has {i} rocks", "constant": True} for i in range(1000)]
    card = {**CARD, "data": {**CARD["data"], "character_book": {"entries": entries}}}
    calls = []
    original = tokenizer.apply_chat_template
    monkeypatch.setattr(tokenizer, "apply_chat_template", lambda *a, **k: calls.append(1) or original(*a, **k))
    messages = build_messages(parse_card(card), history(2), tokenizer, 600, user="Ann")
    assert count_tokens(tokenizer, messages) <= 600
    assert "fact 0:" in str(messages) and "fact 999:" not in str(messages)
    assert len(calls) < 80, len(calls)

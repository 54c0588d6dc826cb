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

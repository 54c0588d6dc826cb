"""Persona in the weights: a card may choose a short prompt (name and a line) for when its weights carry it."""

from __future__ import annotations

import copy

import pytest
from test_prompt import CARD
from training_helpers import log_many

from runtime.characters import parse_card
from runtime.characters.card import CardError
from runtime.characters.prompt import build_messages, count_tokens
from runtime.training import curate


def short_card(**personae) -> dict:
    card = copy.deepcopy(CARD)
    card["data"]["extensions"] = {"personae": {"prompt_style": "short", **personae}}
    return card


@pytest.fixture(scope="module")
def tokenizer(smollm2_folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_folder)


def test_a_short_prompt_card_sends_name_and_a_line(tokenizer):
    full = parse_card(CARD)
    short = parse_card(short_card())
    history = [{"role": "user", "content": "Any storms tonight?"}]
    long_messages = build_messages(full, history, tokenizer, 2000, user="Ann")
    short_messages = build_messages(short, history, tokenizer, 2000, user="Ann")
    system = short_messages[0]["content"]
    # The instruction names the character; the line is the description's first sentence, macros filled in.
    assert system == ("You are Brine. Stay in character: reply in Brine's own voice, and never say that you are an "
                      "AI, an assistant or a language model.\n\nBrine is an old lighthouse keeper who talks to Ann "
                      "about storms.\n\nReply in under 40 words.")
    assert not any(m.get("example") for m in short_messages)  # no example dialogues either
    assert any(m.get("example") for m in long_messages)
    assert count_tokens(tokenizer, short_messages) < count_tokens(tokenizer, long_messages) / 2
    assert short_messages[-1] == {"role": "user", "content": "Any storms tonight?"}
    # The full text stays available (the showdown's prompt-only column, exports).
    assert short.system_text("Ann", style="full") == full.system_text("Ann")


def test_the_card_may_write_its_own_line_and_lore_still_fires(tokenizer):
    short = parse_card(short_card(short_prompt="{{char}} keeps the Gullrock light."))
    messages = build_messages(short, [{"role": "user", "content": "Is the kraken real?"}], tokenizer, 2000)
    assert messages[0]["content"].split("\n\n")[1] == "Brine keeps the Gullrock light."
    assert any("The kraken sleeps under the reef." in m["content"] for m in messages)


def test_a_bad_prompt_style_is_refused_naming_the_field():
    with pytest.raises(CardError, match=r"extensions\.personae\.prompt_style.*\"full\".*\"short\""):
        parse_card(short_card(prompt_style="tiny"), "brine.json")
    with pytest.raises(CardError, match=r"short_prompt"):
        parse_card(short_card(short_prompt=42), "brine.json")


def test_training_data_of_a_short_prompt_card_uses_the_short_prompt(make_engine, tiny_base):
    # Trained and served with the same system message: the weights learn the persona behind the short prompt.
    engine = make_engine(tiny_base)
    log_many(engine.store, 6)
    pixel = engine.catalog.get("pixel")
    pixel.extensions.setdefault("personae", {})["prompt_style"] = "short"
    dataset = curate(engine.store, pixel, engine.settings)
    systems = {example["messages"][0]["content"] for example in dataset.train + dataset.validation}
    assert systems == {pixel.system_text("User")}
    assert len(pixel.system_text("User")) < len(pixel.system_text("User", style="full")) / 2

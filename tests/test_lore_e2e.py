"""Lore, macros and group greetings through the engine: tiny model for the wiring, SmolLM2 end to end."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from runtime.chat.engine import Turn

FIXTURES = Path(__file__).parent / "fixtures" / "cards"


def turn(text, channel="c1", **extra):
    return Turn(platform="test", channel=channel, user_id="u1", user_name="Ann", text=text,
                sampling={"temperature": 0, "max_new_tokens": 6}, **extra)


def test_group_channel_greets_with_group_only_greetings(make_engine, tiny_base, tmp_path):
    engine = make_engine(tiny_base)
    engine.catalog.import_card(FIXTURES / "nomad-v3.json")
    amaru, pixel = engine.catalog.get("amaru-quispe"), engine.catalog.get("pixel")
    alone = engine.log_greeting(turn("", channel="solo"), amaru)
    assert alone["text"] == "Allin p'unchaw, Ann."
    engine.store.bind("test", "party", "amaru-quispe")
    engine.store.bind("test", "party", "pixel")
    group = engine.log_greeting(turn("", channel="party"), amaru)
    assert group["text"] == f"Allin p'unchaw, everyone. Amaru, {pixel.display_name}, stay close."


def test_idle_duration_and_lore_reach_the_engine_prompt(make_engine, tiny_base, prompt_spy, tmp_path):
    card = json.loads((FIXTURES / "sailor-st-v2.json").read_text(encoding="utf-8"))
    card = copy.deepcopy(card)
    card["data"]["post_history_instructions"] = "Idle: {{idle_duration}}."
    (tmp_path / "soren.json").write_text(json.dumps(card, ensure_ascii=False), encoding="utf-8")
    engine = make_engine(tiny_base)
    character = engine.catalog.import_card(tmp_path / "soren.json")
    spy = prompt_spy(engine)
    engine.reply(turn("Hello", character=character)).result()
    engine.reply(turn("Any herring?", character=character)).result()
    first, second = spy.prompts
    # The post-history instruction closes the system prompt (what kept SmolLM2 from reading it back).
    assert first[0]["content"].endswith("Idle: just now.")
    assert second[0]["content"].endswith("Idle: a few seconds.")
    assert "Herring is the silver" in second[0]["content"] and "Herring is the silver" not in first[0]["content"]


@pytest.mark.real_model
def test_real_smollm2_answers_with_triggered_lore_in_its_prompt(make_engine, real_base, prompt_spy):
    engine = make_engine(real_base)
    character = engine.catalog.import_card(FIXTURES / "sailor-st-v2.json")
    spy = prompt_spy(engine)
    reply = engine.reply(Turn(platform="test", channel="c1", user_id="u1", user_name="Ann",
                              text="What do you sell, and is it herring from Ålesund?", character=character,
                              sampling={"temperature": 0, "max_new_tokens": 40}))
    text = reply.result()
    prompt = spy.prompts[-1]
    system = prompt[0]["content"]
    assert system.index("Herring is the silver of the sea") < system.index("Søren is a retired sailor")
    assert {"role": "user", "content": "Ålesund burned in 1904 and was rebuilt in stone."} == prompt[-1]
    assert any(m["content"] == "Søren speaks in short sentences and swears by Njord." for m in prompt[1:])
    logged = engine.store.recent(5)
    assert logged[-1]["role"] == "assistant" and logged[-1]["text"].strip()
    assert logged[-1]["text"] == text and logged[-1]["character"] == "sren"
    print("SmolLM2 reply:", text)

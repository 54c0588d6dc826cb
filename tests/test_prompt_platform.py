"""What platforms add to a prompt: SillyTavern's author's note at a depth, a channel's prompt inside the budget."""

from __future__ import annotations

import pytest

from runtime.characters.prompt import build_messages, count_tokens

HI = [{"role": "user", "content": "Hello there"}]


@pytest.fixture
def engine(make_engine, tiny_base):
    return make_engine(tiny_base, temperature=0, max_new_tokens=4)


def test_a_channel_prompt_counts_against_the_budget_and_the_history_gives_way(engine, tiny_base):
    character, tokenizer = engine.catalog.get("pixel"), tiny_base.tokenizer
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message number {i} " * 8}
               for i in range(41)]
    addition = "Always answer as a pirate would, {{user}}. " * 12
    plain = build_messages(character, history, tokenizer, 700, user="Ann")
    added = build_messages(character, history, tokenizer, 700, user="Ann", addition=addition)
    assert count_tokens(tokenizer, added) <= 700 and count_tokens(tokenizer, plain) <= 700
    assert added[0]["content"].endswith("Always answer as a pirate would, Ann.")
    chat = [m for m in added if m["role"] != "system" and not m.get("example")]
    assert len(chat) < len([m for m in plain if m["role"] != "system" and not m.get("example")])
    assert chat[-1]["content"] == history[-1]["content"]


def test_an_in_chat_system_message_is_the_authors_note_at_its_depth(server, engine, prompt_spy):
    spy = prompt_spy(engine)
    server.openai().chat.completions.create(model="pixel", max_tokens=2, messages=[
        {"role": "system", "content": "You are a helpful assistant."},  # the client's own prompt: the card wins
        {"role": "user", "content": "Hi Pixel"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "system", "content": "[Pixel is very sleepy today.]"},
        {"role": "user", "content": "How are you?"},
    ])
    prompt = spy.prompts[-1]
    chat = [m for m in prompt if not m.get("example")][-3:]
    assert chat == [{"role": "assistant", "content": "Hello!"},
                    {"role": "system", "content": "[Pixel is very sleepy today.]"},
                    {"role": "user", "content": "How are you?"}]
    assert not any("helpful assistant" in m["content"] for m in prompt)


def test_the_authors_note_depth_counts_from_the_end(engine, tiny_base):
    character = engine.catalog.get("pixel")
    history = [{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"},
               {"role": "user", "content": "three"}]
    for depth, after in ((0, "three"), (1, "two"), (2, "one"), (9, None)):  # deeper than the chat: its start
        messages = build_messages(character, history, tiny_base.tokenizer, 900, authors_note="NOTE",
                                  authors_note_depth=depth)
        chat = [m["content"] for m in messages if not m.get("example")][1:]  # without the system prompt
        at = chat.index("NOTE")
        assert (chat[at - 1] if at else None) == after and chat.count("NOTE") == 1

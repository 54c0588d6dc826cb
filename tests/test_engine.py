"""The engine on the tiny model: a turn is generated, streamed, filtered, logged; hooks run."""

from __future__ import annotations

from runtime.chat.engine import Turn
from runtime.hookspecs import hookimpl


def turn(text, **extra):
    return Turn(platform="test", channel="c1", user_id="u1", user_name="Ann", text=text,
                sampling={"temperature": 0, "max_new_tokens": 8}, **extra)


def test_turn_is_streamed_and_both_messages_logged(make_engine, tiny_base):
    engine = make_engine(tiny_base)
    reply = engine.reply(turn("Hello there", character=engine.catalog.get("pixel")))
    pieces = list(reply)
    assert "".join(pieces).strip() != "" or reply.stream.completion_tokens > 0
    rows = engine.store.recent(10)
    assert [r["role"] for r in rows] == ["user", "assistant"]
    assert rows[0]["text"] == "Hello there" and rows[0]["user_id"] == "u1"
    assert rows[1]["reply_to"] == rows[0]["id"]
    assert rows[1]["character"] == "pixel" and rows[1]["weights_version"] == "base"
    assert rows[1]["completion_tokens"] == 8 and rows[1]["prompt_tokens"] > 50


def test_hooks_change_prompt_and_reply(make_engine, tiny_base):
    engine = make_engine(tiny_base)
    seen = {}

    class Plugin:
        @hookimpl
        def prompt_messages(self, character, messages, turn):
            messages.append({"role": "system", "content": "Be brief."})
            seen["messages"] = messages

        @hookimpl
        def filter_reply(self, character, reply, turn):
            reply.text = "[filtered] " + reply.text

        @hookimpl
        def message_logged(self, message, store):
            seen.setdefault("logged", []).append(message["role"])

    plugin = Plugin()
    engine.pm.register(plugin)
    try:
        text = engine.reply(turn("Hi", character=engine.catalog.get("pixel"))).result()
    finally:
        engine.pm.unregister(plugin)
    assert seen["messages"][-1]["content"] == "Be brief."
    assert text.startswith("[filtered] ")
    assert engine.store.recent(1)[0]["text"].startswith("[filtered] ")
    assert seen["logged"] == ["user", "assistant"]


def test_regenerate_keeps_both_replies_and_history_uses_the_new_one(make_engine, tiny_base):
    engine = make_engine(tiny_base)
    first = engine.reply(turn("Tell me a story", character=engine.catalog.get("pixel")))
    first.result()
    swipe = engine.regenerate(turn("", character=engine.catalog.get("pixel")))
    swipe.result()
    rows = engine.store.recent(10)
    assert len([r for r in rows if r["role"] == "assistant"]) == 2
    assert swipe.message["swipe_of"] == first.message["id"]
    history = engine.store.history(swipe.message["conversation_id"])
    assert first.message["id"] not in [m["id"] for m in history]


def test_greeting_logged_once_per_conversation(make_engine, tiny_base):
    engine = make_engine(tiny_base)
    character = engine.catalog.get("pixel")
    assert engine.log_greeting(turn(""), character)["text"] == engine.greeting(character, "Ann")
    assert engine.log_greeting(turn(""), character) is None


def test_cancelled_reply_is_not_logged(make_engine, tiny_base):
    engine = make_engine(tiny_base)
    reply = engine.reply(Turn(platform="test", channel="c2", user_id="u1", text="Hi", character=engine.catalog.get("pixel"),
                              sampling={"temperature": 0, "max_new_tokens": 200}))
    reply.cancel()
    list(reply)
    assert reply.message is None
    assert [r["role"] for r in engine.store.recent(10)] == ["user"]


def test_busy_generator_leaves_no_unanswered_message(make_engine, tiny_base):
    import pytest

    from runtime.generation.types import GeneratorBusy

    engine = make_engine(tiny_base)
    generator = engine.generator

    def busy(request):
        raise GeneratorBusy(3)

    generator.submit = busy
    with pytest.raises(GeneratorBusy) as raised:
        engine.reply(turn("Are you there?", character=engine.catalog.get("pixel")))
    assert raised.value.retry_after == 3 and "retry" in str(raised.value)
    assert engine.store.recent(10) == []

"""The degeneration guard: real degenerate SmolLM2 output is caught, real coherent lines are not."""

from __future__ import annotations

import json

from runtime.generation.guard import DegenerationMonitor, check_reply


def test_the_cards_own_lines_pass(make_engine, tiny_base):
    engine = make_engine(tiny_base)
    lines = [m["content"] for c in engine.catalog.characters.values() for block in c.example_dialogues()
             for m in block if m["role"] == "assistant"]
    lines += [g for c in engine.catalog.characters.values() for g in c.greetings()]
    assert len(lines) >= 10
    flagged = [(line, check_reply(line).reason) for line in lines if check_reply(line)]
    assert not flagged


def test_the_monitor_fires_on_complete_words_only():
    monitor = DegenerationMonitor(use_probs=False)
    pieces = ["Well", ", ", "fashion", "ista", ", fashion", "ista, fashion", "ista, fashion", "ista", ", fash"]
    verdicts = [monitor.feed(p) for p in pieces]
    fired = next(i for i, v in enumerate(verdicts) if v)
    assert "fashionista" in monitor.verdict.reason and fired >= 6  # not before the fourth word was complete
    assert monitor.feed("more") is monitor.verdict  # stays degenerate


def test_a_sampled_reply_that_degenerates_is_stopped_marked_and_kept_out_of_history(make_engine, tiny_base):
    """The tiny random model samples gibberish: the guard stops it; the log marks it; the next prompt omits it."""
    from runtime.chat.engine import Turn

    engine = make_engine(tiny_base)
    pixel = engine.catalog.get("pixel")
    sampling = {"temperature": 1.5, "max_new_tokens": 120, "seed": 7}
    first = engine.reply(Turn(platform="t", channel="g", user_id="u", text="Hi", character=pixel, sampling=sampling))
    first.result()
    assert first.stream.finish_reason == "degenerate" and first.stream.completion_tokens < 120
    meta = json.loads(first.message["meta"])
    assert meta["finish_reason"] == "degenerate" and meta["degenerate"]
    conversation = first.message["conversation_id"]
    assert first.message["id"] not in [m["id"] for m in engine.store.history(conversation)]
    assert first.message["id"] in [m["id"] for m in engine.store.history(conversation, degenerate=True)]
    greedy = engine.reply(Turn(platform="t", channel="g2", user_id="u", text="Hi", character=pixel,
                               sampling={"temperature": 0, "max_new_tokens": 12}))
    greedy.result()
    assert greedy.stream.finish_reason == "length"  # greedy replies are deterministic and not guarded

"""Re-sampling once when the guard fires before anything was shown, the copy check, and the DRY penalty."""

from __future__ import annotations

import json
import threading
from dataclasses import replace

import pytest

from runtime.generation.guard import COPY_STREAM_TRIGRAMS, DegenerationMonitor
from runtime.generation.types import ReplyStream, Request, SamplingSettings

EARLIER = ("Ladies and gentlemen, I'm Captain Mara Voss of the Grey Gull, and I've got plans to sail to the "
           "South Seas in a few weeks' time. My ship is the Grey Gull, but she's no ordinary ship.")


def test_a_retracted_attempt_never_reaches_the_consumer():
    stream = ReplyStream(Request([1], SamplingSettings()))
    stream.push("fashionista, fashionista")
    assert stream.retract() and stream.text == "" and stream.first_token_at is None
    stream.push("Ahoy!")
    stream.finish("stop")
    assert list(stream) == ["Ahoy!"] and stream.text == "Ahoy!"


def test_text_a_consumer_took_cannot_be_taken_back():
    stream = ReplyStream(Request([1], SamplingSettings()))
    stream.push("Ahoy")
    taken = []
    reader = threading.Thread(target=lambda: taken.extend(stream))
    reader.start()
    while not stream.shown:  # the console has printed it
        threading.Event().wait(0.01)
    assert stream.retract() is False and stream.text == "Ahoy"
    stream.finish("degenerate")
    reader.join(5)
    assert taken == ["Ahoy"]


def test_result_does_not_count_as_shown():
    stream = ReplyStream(Request([1], SamplingSettings()))
    stream.push("a")
    stream.finish("stop")
    assert stream.result() == "a" and not stream.shown


def test_the_monitor_catches_a_reply_said_again_but_not_a_shared_opening():
    monitor = DegenerationMonitor(use_probs=False, earlier=[EARLIER])
    words = EARLIER.split(" ")
    fired = next(i for i, word in enumerate(words) if monitor.feed(word + " "))
    assert monitor.verdict.reason.startswith("copy:") and fired >= COPY_STREAM_TRIGRAMS  # not on the first words
    opening = DegenerationMonitor(use_probs=False, earlier=[EARLIER])
    for word in "Ladies and gentlemen, I'm Captain Mara Voss! Today we hunt the kraken off the cape.".split(" "):
        assert not opening.feed(word + " ")
    assert not opening.finish()
    short = DegenerationMonitor(use_probs=False, earlier=[EARLIER])  # a short copy is caught at the end
    short.feed("I'm Captain Mara Voss of the Grey Gull.")
    assert short.finish().reason.startswith("copy:")


def test_a_retry_after_gibberish_is_drawn_cooler_and_after_a_repeat_is_not():
    from runtime.generation.guard import Verdict
    from runtime.generation.rows import RETRY_COOLING, RETRY_MIN_P, retry_sampling

    card = SamplingSettings(temperature=0.9, min_p=0.1, seed=7)
    invented = retry_sampling(card, Verdict(True, "gibberish: invented words 'BEEPOP', 'SQUELK'"))
    assert invented.temperature == pytest.approx(0.9 * RETRY_COOLING) and invented.min_p == RETRY_MIN_P
    assert invented.seed not in (None, 7) and invented.top_k == card.top_k  # a new seed; the rest as asked
    assert retry_sampling(replace(card, min_p=0.3), Verdict(True, "gibberish: x")).min_p == 0.3  # never looser
    for reason in ("loop: 'BEEP' x4 in a row", "copy: 67% of the reply's trigrams come from earlier text #3"):
        repeat = retry_sampling(card, Verdict(True, reason))
        assert (repeat.temperature, repeat.min_p) == (0.9, 0.1) and repeat.seed == invented.seed
    assert retry_sampling(replace(card, seed=None), Verdict(True, "gibberish: x")).seed is None  # random stays random


def _turn(pixel, channel, **sampling):
    from runtime.chat.engine import Turn

    return Turn(platform="t", channel=channel, user_id="u", text="Hi", character=pixel,
                sampling={"temperature": 1.5, "max_new_tokens": 120, "seed": 7, **sampling})


def test_an_unseen_degenerate_reply_is_resampled_once(make_engine, tiny_base):
    """The tiny random model samples gibberish: waited for (nothing shown), it gets one more try, then is marked."""
    engine = make_engine(tiny_base)
    pixel = engine.catalog.get("pixel")
    waited = engine.reply(_turn(pixel, "waited"))
    waited.result()
    stream = waited.stream
    assert stream.resampled and stream.request.sampling.seed != 7  # the second try had its own seed
    assert stream.finish_reason == "degenerate" and stream.degenerate  # the random model fails again: marked
    meta = json.loads(waited.message["meta"])
    assert meta["resampled"] == stream.resampled and meta["degenerate"] == stream.degenerate
    assert waited.message["text"] == stream.text.strip()  # the second attempt's text only

    shown = engine.reply(_turn(pixel, "shown"))
    pieces = list(shown)  # a console: every piece is printed as it comes
    assert shown.stream.resampled is None and shown.stream.finish_reason == "degenerate"
    assert "".join(pieces) == shown.stream.text

    off = engine.reply(_turn(pixel, "off", resample=False))
    off.result()
    assert off.stream.resampled is None and off.stream.finish_reason == "degenerate"
    assert off.stream.text == shown.stream.text  # same seed, same first attempt


def test_platforms_that_show_the_reply_whole_let_the_guard_resample(make_engine, tiny_base):
    """HTTP without stream and Discord without streaming hand the reply over whole (StreamedReply(whole=True))."""
    import asyncio

    from runtime.chat.streaming import StreamedReply

    engine = make_engine(tiny_base)
    pixel = engine.catalog.get("pixel")

    async def collect(whole):
        stream = StreamedReply(lambda: engine.reply(_turn(pixel, f"whole-{whole}")), whole=whole)
        return [piece async for piece in stream], stream.reply

    pieces, whole = asyncio.run(collect(True))
    assert whole.stream.resampled and pieces == [whole.stream.text] and whole.message is not None
    pieces, streamed = asyncio.run(collect(False))
    assert streamed.stream.resampled is None and "".join(pieces) == streamed.stream.text


def test_dry_penalises_the_token_that_would_continue_a_repeat():
    import torch

    from runtime.generation.sampling import DryPenalty

    a, b, c, d, e, breaker = 1, 2, 3, 4, 5, 9
    dry = DryPenalty(0.8, 1.75, 2, -1, frozenset({breaker}))
    scores = dry(torch.tensor([[a, b, c, d, a, b, c]]), torch.zeros(1, 10))
    assert scores[0, d] == pytest.approx(-0.8 * 1.75 ** (3 - 2))  # "a b c" said again: d would continue it
    assert int((scores != 0).sum()) == 1
    short = dry(torch.tensor([[e, c, d, a, c]]), torch.zeros(1, 10))
    assert not short.any()  # a repeat of one token is allowed (allowed_length 2)
    broken = dry(torch.tensor([[a, breaker, c, d, b, breaker, c]]), torch.zeros(1, 10))
    assert broken[0, d] == 0  # the breaker ends the match: length 1, allowed
    window = DryPenalty(0.8, 1.75, 2, 4, frozenset())(torch.tensor([[a, b, c, d, a, b, c]]), torch.zeros(1, 10))
    assert not window.any()  # the first "a b c" is outside the last 4 ids


def test_dry_is_off_by_default_and_set_per_request(make_engine, tiny_base):
    from runtime.generation.sampling import DryPenalty, build_processors

    engine = make_engine(tiny_base)
    pixel = engine.catalog.get("pixel")
    assert SamplingSettings.from_sources(engine.settings, pixel).dry_multiplier == 0.0  # off by default
    sampling = SamplingSettings.from_sources(engine.settings, pixel, dry_multiplier=0.8)
    processors = build_processors(sampling, 3, set(), tiny_base.tokenizer)
    dry = next(p for p in processors if isinstance(p, DryPenalty))
    newline = tiny_base.tokenizer.encode("\n", add_special_tokens=False)
    assert dry.multiplier == 0.8 and set(newline) <= dry.breakers


@pytest.mark.real_model
def test_on_smollm2_a_reply_said_again_is_resampled_when_unseen_and_cut_when_shown(make_engine, real_base):
    """The same prompt and seed give the same reply; told that reply came before, the guard catches the copy."""
    from dataclasses import replace

    from runtime.chat.engine import Turn
    from runtime.generation.guard import copy_signal

    engine = make_engine(real_base, max_new_tokens=60)
    mara = engine.catalog.get("captain-mara-voss")
    first = engine.reply(Turn(platform="t", channel="c", user_id="u", text="Who are you?", character=mara,
                              sampling={"seed": 5}))
    said = first.result()
    assert first.stream.finish_reason in ("stop", "length") and len(said.split()) >= 8, said
    request = first.stream.request  # the attempt that produced `said` (its seed, if the guard re-sampled)

    again = engine.generator.submit(replace(request, sampling=replace(request.sampling), earlier=[said]))
    text = again.result()
    assert again.resampled and again.resampled.startswith("copy:"), (again.resampled, text)
    assert again.request.avoid  # the retry may not go on with the copied reply's runs
    assert text.strip() != said.strip() and again.finish_reason != "degenerate", text
    assert not copy_signal(text, [said])  # the second try is new text, not the first said again

    shown = engine.generator.submit(replace(request, sampling=replace(request.sampling), earlier=[said]))
    pieces = list(shown)  # printed as it comes: too late to re-sample, so cut and marked
    assert shown.resampled is None and shown.finish_reason == "degenerate" and shown.degenerate.startswith("copy:")
    assert said.startswith("".join(pieces).strip()[:40])


def _encode(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False)


def test_a_retry_after_a_copy_bans_the_copied_runs_but_not_shared_words_names_or_word_middles(tiny_base):
    from runtime.generation.avoid import NGRAM, banned_runs, name_tokens, word_starts

    tokenizer = tiny_base.tokenizer
    card = _encode(tokenizer, "You are Captain Mara Voss of the Grey Gull, and I've got plans to sail.")
    copied = _encode(tokenizer, EARLIER)
    prompt = card + _encode(tokenizer, "\nuser: hi\nassistant: ") + copied + _encode(tokenizer, "\nuser: more?")
    starts = word_starts(tokenizer)
    runs = banned_runs(prompt, [copied], copied, starts)
    assert runs and all(len(run) == NGRAM and run[-1] in starts for run in runs)  # never a word's middle
    joined = [tokenizer.decode(run) for run in runs]
    assert any("South Seas in a few" in text for text in joined)  # the copied reply's own words
    assert all(tuple(run) not in {tuple(card[i:i + NGRAM]) for i in range(len(card))} for run in runs)  # the card's
    names = name_tokens(tokenizer, ["Captain Mara Voss", "Ann"])
    assert any(run[-1] in names for run in runs)  # ", I'm Captain" -> " Mar(a)": not in the card, banned ...
    kept = banned_runs(prompt, [copied], copied, starts, names)
    assert not any(run[-1] in names for run in kept) and 0 < len(kept) < len(runs)  # ... unless names are kept
    new = _encode(tokenizer, " The kraken rises tonight, lads, and we sail at dawn.")
    assert len(banned_runs(prompt, [copied], copied + new, starts)) > len(runs)  # the attempt's own runs too
    other = _encode(tokenizer, "Storms roll in off the cape every evening, and the crew sings.")
    both = banned_runs(prompt + other, [copied, other], copied, starts)
    assert len(both) > len(runs)  # a second banned reply adds its runs


def _near_greedy(**options):
    """Almost greedy, guarded, no loops: the tiny model says the same thing whatever the seed."""
    return SamplingSettings(temperature=0.001, top_k=0, min_p=0, repetition_penalty=1.0, presence_penalty=5.0,
                            max_new_tokens=40, seed=3, **options)


def test_the_retry_after_a_forced_copy_says_something_else_on_the_tiny_model(make_engine, tiny_base, monkeypatch):
    """The reply the model just gave, handed back as an earlier reply: both attempts would copy it without the ban."""
    import runtime.generation.guard as guard
    import runtime.generation.rows as rows
    from runtime.generation.avoid import NGRAM
    from runtime.generation.guard import Verdict, copy_signal

    engine = make_engine(tiny_base)
    tokenizer = tiny_base.tokenizer
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    prompt = _encode(tokenizer, chat)
    said = engine.generator.submit(Request(prompt, _near_greedy(guard=False))).result()
    assert len(said.split()) >= 10, said
    # The random model's words are gibberish to the within-reply checks; only the copy check judges here.
    monkeypatch.setattr(guard, "check_reply", lambda *args, **kwargs: Verdict(False))

    with monkeypatch.context() as without:  # the retry as it was: same prompt, new seed, no ban
        without.setattr(rows, "retry_ban", lambda *args: [])
        plain = engine.generator.submit(Request(prompt + [], _near_greedy(), earlier=[said]))
        plain.result()
    assert plain.resampled.startswith("copy:") and plain.request.avoid == []
    assert plain.finish_reason == "degenerate" and plain.degenerate.startswith("copy:"), (said, plain.text)  # copied again

    banned = engine.generator.submit(Request(prompt + [], _near_greedy(), earlier=[said]))
    text = banned.result()
    assert banned.resampled.startswith("copy:") and banned.request.avoid
    assert banned.finish_reason in ("stop", "length") and not copy_signal(text, [said]), text
    reply = _encode(tokenizer, text)
    grams = {tuple(reply[i:i + NGRAM]) for i in range(len(reply))}
    assert not grams & {tuple(run) for run in banned.request.avoid}


def test_a_retry_after_a_loop_bans_the_runs_that_came_back_but_not_the_prompts_or_names(tiny_base):
    from runtime.generation.avoid import NGRAM, looped_runs, name_tokens, word_starts

    tokenizer = tiny_base.tokenizer
    prompt = _encode(tokenizer, "You are Captain Mara Voss. user: sing! assistant:")
    refrain = " Yo ho, the sea is wide, the wind is free,"
    attempt = _encode(tokenizer, " Aye!" + refrain * 3)
    starts = word_starts(tokenizer)
    runs = looped_runs(prompt, attempt, starts)
    assert runs and all(len(run) == NGRAM and run[-1] in starts for run in runs)
    assert any("the wind is free" in tokenizer.decode(run) for run in runs)
    word = _encode(tokenizer, " sea" * 4)
    assert looped_runs(prompt, word, starts) == [word[:3]]  # a short loop: the third "sea" after two
    once = _encode(tokenizer, " Aye! The tide turns at dawn and we sail for the cape.")
    assert looped_runs(prompt, once, starts) == []  # nothing came back: nothing banned
    assert looped_runs(prompt + attempt, attempt, starts) == []  # runs the prompt holds stay allowed
    names = name_tokens(tokenizer, ["Captain Mara Voss"])
    chant = _encode(tokenizer, " I am Captain Mara Voss! I am Captain Mara Voss! I am Captain Mara Voss!")
    assert not any(run[-1] in names for run in looped_runs(prompt[:2], chant, starts, names))


def test_the_retry_after_a_loop_goes_round_again_without_the_ban_and_not_with_it(make_engine, tiny_base, monkeypatch):
    """Greedy random weights go round in circles; the one re-sample loops again unless the looped runs are banned."""
    import runtime.generation.guard as guard
    import runtime.generation.rows as rows
    from runtime.generation.guard import Verdict

    def loop_only(text, *args, **kwargs):  # the random model's words are gibberish: judge loops alone
        signal = guard._loop_signals(guard._WORD.findall(text))
        return Verdict(bool(signal), signal)

    engine = make_engine(tiny_base)
    tokenizer = tiny_base.tokenizer
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    prompt = _encode(tokenizer, chat)
    # Two words pushed far above the rest: greedy says the stronger one over and over.
    words = {_encode(tokenizer, " sea")[0]: 100.0, _encode(tokenizer, " wind")[0]: 99.0}
    greedy = SamplingSettings(temperature=0.001, top_k=0, min_p=0, repetition_penalty=1.0, max_new_tokens=40, seed=3,
                              logit_bias=words)
    first = engine.generator.submit(Request(prompt, replace(greedy, guard=False))).result()
    assert loop_only(first), first
    monkeypatch.setattr(guard, "check_reply", loop_only)

    with monkeypatch.context() as without:
        without.setattr(rows, "retry_ban", lambda *args: [])
        plain = engine.generator.submit(Request(prompt + [], greedy))
        plain.result()
    assert plain.resampled.startswith("loop") and plain.finish_reason == "degenerate", plain.text

    banned = engine.generator.submit(Request(prompt + [], greedy))
    text = banned.result()
    assert banned.resampled.startswith("loop") and banned.request.avoid
    reply = _encode(tokenizer, text)
    assert not any(tuple(reply[i:i + len(run)]) == tuple(run) for run in banned.request.avoid
                   for i in range(len(reply))), text

"""Streaming text: incremental detokenisation of multi-byte characters, stop strings held back and cut."""

from __future__ import annotations

from runtime.generation.detok import Detokenizer, StopText


def test_pieces_add_up_to_the_full_decode_with_multibyte_characters(tiny_base):
    tokenizer = tiny_base.tokenizer
    text = "Café ☕ 日本語 — ahoy 🦜 über naïve  spaces\nnew line ✓"
    ids = tokenizer.encode(text, add_special_tokens=False)
    detok = Detokenizer(tokenizer)
    pieces = [detok.add(token) for token in ids] + [detok.flush()]
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True) == text
    assert not any("\ufffd" in piece for piece in pieces)
    assert "" in pieces  # some tokens are half a character and wait for the next one


def test_special_tokens_are_not_streamed(tiny_base):
    tokenizer = tiny_base.tokenizer
    detok = Detokenizer(tokenizer)
    ids = tokenizer.encode("Hi", add_special_tokens=False) + [tokenizer.eos_token_id]
    assert "".join(detok.add(t) for t in ids) == "Hi"


def test_stop_string_prefix_is_held_back_then_cut():
    stop = StopText(["\nAnn:"])
    assert stop.feed("Hello") == "Hello"
    assert stop.feed("\nA") == ""  # could be the start of the stop string
    assert stop.feed("nn: and more") == ""
    assert stop.stopped and stop.text == "Hello"


def test_held_back_text_is_released_when_it_is_not_a_stop():
    stop = StopText(["\nAnn:"])
    assert stop.feed("Hi\nA") == "Hi"
    assert stop.feed("lso") == "\nAlso"
    assert stop.feed("\nAn") == ""
    assert stop.flush() == "\nAn" and not stop.stopped


def test_no_stops_streams_everything():
    stop = StopText([])
    assert stop.feed("abc") == "abc" and stop.feed("") == "" and stop.flush() == ""

"""The request shapes real OpenAI clients send (the openai client, SillyTavern's Custom source, vLLM's server tests),
each driven through the official openai client against a live server."""

from __future__ import annotations

import time

import openai
import pytest
from http_server import LiveServer

HI = [{"role": "user", "content": "Hello there"}]
# Pixel's card samples at temperature 0.9 (a card beats the config's temperature=0): a test that counts tokens
# asks for greedy replies, or about one sampled 6-token reply in ten from the random-weight model is cut
# short by the degeneration guard as gibberish (finish_reason "stop").
GREEDY = {"temperature": 0}


@pytest.fixture
def engine(make_engine, tiny_base):
    return make_engine(tiny_base, temperature=0, max_new_tokens=8, repetition_penalty=1.0)


class Submitted(list):
    """Every Request the engine hands the generator, and (in .streams) the ReplyStream it got back."""

    def __init__(self):
        super().__init__()
        self.streams = []


@pytest.fixture
def submitted(engine, monkeypatch):
    seen = Submitted()
    submit = engine.generator.submit

    def spy(request):
        seen.append(request)
        seen.streams.append(submit(request))
        return seen.streams[-1]

    monkeypatch.setattr(engine.generator, "submit", spy)
    return seen


def logged(engine, role="assistant"):
    return engine.store.query("select * from messages where role = ? order by id", [role])


def refused(server, param, **body):
    """The 400 a request gets, as the openai client raises it; it must name `param`."""
    body.setdefault("messages", HI)
    with pytest.raises(openai.BadRequestError) as caught:
        server.openai().chat.completions.create(model="pixel", **body)
    assert caught.value.status_code == 400 and caught.value.body["param"] == param, caught.value.body
    return caught.value.body["message"]


# --- max_completion_tokens, stream_options, finish_reason --------------------------------------------------


def test_max_completion_tokens_is_honoured_like_max_tokens(server, engine):
    response = server.openai().chat.completions.create(model="pixel", messages=HI, max_completion_tokens=5, **GREEDY)
    assert response.usage.completion_tokens == 5 and response.choices[0].finish_reason == "length"
    assert logged(engine)[0]["completion_tokens"] == 5
    message = refused(server, "max_completion_tokens", max_completion_tokens=10**6)
    assert "ask for at most" in message


def test_include_usage_adds_one_final_chunk_and_finish_reason_comes_once(server):
    chunks = list(server.openai().chat.completions.create(
        model="pixel", messages=HI, max_completion_tokens=6, stream=True, stream_options={"include_usage": True},
        **GREEDY))
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason is not None]
    assert len(finishing) == 1 and finishing[0].choices[0].finish_reason == "length"
    assert [c for c in chunks if not c.choices] == [chunks[-1]]
    assert chunks[-1].usage.completion_tokens == 6 and chunks[-1].usage.total_tokens > 6
    assert all(c.usage is None for c in chunks[:-1])
    # Without include_usage there is no usage chunk at all.
    plain = list(server.openai().chat.completions.create(model="pixel", messages=HI, max_tokens=3, stream=True))
    assert all(c.choices for c in plain)


def test_stream_options_without_streaming_is_a_400(server, engine):
    message = refused(server, "stream_options", stream_options={"include_usage": True})
    assert "stream" in message and logged(engine, "user") == []


# --- n > 1 --------------------------------------------------------------------------------------------------


def test_n_choices_are_separate_generations_logged_as_swipes(server, engine, submitted):
    response = server.openai().chat.completions.create(
        model="pixel", messages=HI, n=3, temperature=1.0, seed=7, max_tokens=6)
    assert [c.index for c in response.choices] == [0, 1, 2]
    assert response.usage.completion_tokens == 18  # each choice its own 6 tokens; the prompt counted once
    assert [r.sampling.seed for r in submitted] == [7, 8, 9]  # three requests, each its own random stream
    assert len({tuple(r.input_ids) for r in submitted}) == 1
    replies, asked = logged(engine), logged(engine, "user")
    assert len(asked) == 1 and {r["reply_to"] for r in replies} == {asked[0]["id"]}
    assert {c.model_extra["personae_message_id"] for c in response.choices} == {r["id"] for r in replies}
    assert {c.message.content for c in response.choices} == {r["text"] for r in replies}
    # Logged as they finished, each a swipe of the one before: the log keeps them all, history and curation one.
    assert [r["swipe_of"] for r in replies] == [None, replies[0]["id"], replies[1]["id"]]
    conversation = asked[0]["conversation_id"]
    assert [m["id"] for m in engine.store.history(conversation)] == [asked[0]["id"], replies[2]["id"]]


def test_the_choice_the_client_carries_on_from_is_the_one_kept(server, engine):
    from runtime.training.curate import curate

    client = server.openai()
    chat = [{"role": "user", "content": "Name a colour"}]
    response = client.chat.completions.create(model="pixel", messages=chat, n=3, temperature=1.0, seed=21,
                                              max_tokens=5)
    texts = [c.message.content for c in response.choices]
    assert len(set(texts)) == 3
    picked = response.choices[0]  # SillyTavern's user swiped back to the first one and answered it
    chat += [{"role": "assistant", "content": picked.message.content}, {"role": "user", "content": "Why?"}]
    client.chat.completions.create(model="pixel", messages=chat, max_tokens=3)
    replies = [r for r in logged(engine) if r["reply_to"] == logged(engine, "user")[0]["id"]]
    survivors = [r["id"] for r in replies if r["id"] not in {x["swipe_of"] for x in replies}]
    assert survivors == [picked.model_extra["personae_message_id"]]
    dataset = curate(engine.store, engine.catalog.get("pixel"), engine.settings)
    trained = [m["content"] for example in dataset.train + dataset.validation for m in example["messages"]
               if m["role"] == "assistant"]
    assert picked.message.content in trained and not {texts[1], texts[2]} & set(trained)


def test_n_choices_stream_with_their_index_and_one_finish_each(server, engine):
    chunks = list(server.openai().chat.completions.create(
        model="pixel", messages=HI, n=2, temperature=1.0, seed=3, max_tokens=5, stream=True,
        stream_options={"include_usage": True}))
    texts, finishes = {0: "", 1: ""}, {0: [], 1: []}
    for chunk in chunks[:-1]:
        (choice,) = chunk.choices
        texts[choice.index] += choice.delta.content or ""
        if choice.finish_reason:
            finishes[choice.index].append(chunk)
    assert {i: len(f) for i, f in finishes.items()} == {0: 1, 1: 1}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    for index in (0, 1):
        row = engine.store.message(finishes[index][0].model_extra["personae_message_id"])
        assert row["text"] == texts[index] and row["role"] == "assistant"


def test_more_choices_than_the_batch_is_a_400_naming_n(server, engine):
    assert "max_batch" in refused(server, "n", n=engine.settings.max_batch + 1)


# --- logprobs --------------------------------------------------------------------------------------------


def test_logprobs_are_the_models_own(server, engine, submitted, tiny_base):
    import torch

    response = server.openai().chat.completions.create(
        model="pixel", messages=HI, max_tokens=6, logprobs=True, top_logprobs=5, temperature=0,
        extra_body={"repetition_penalty": 1.0})  # pixel's card sets one; without it greedy is the plain argmax
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens == 6
    for entry in content:
        alternatives = [t.logprob for t in entry.top_logprobs]
        assert len(alternatives) == 5 and alternatives == sorted(alternatives, reverse=True)
        assert entry.logprob == pytest.approx(alternatives[0], abs=1e-4)  # greedy took the likeliest
        assert bytes(entry.bytes).decode("utf-8", "replace") == entry.token
    assert "".join(e.token for e in content).strip() == response.choices[0].message.content
    # The same numbers from a plain forward pass of the model over prompt and reply.
    prompt, ids = submitted[0].input_ids, [e.token for e in submitted.streams[0].logprobs]
    assert [tiny_base.tokenizer.decode([i]) for i in ids] == [e.token for e in content]
    with torch.no_grad():
        logits = tiny_base.model(torch.tensor([prompt + ids])).logits[0].float()
    expected = torch.log_softmax(logits[len(prompt) - 1: -1], dim=-1).gather(1, torch.tensor(ids)[:, None])[:, 0]
    assert [e.logprob for e in content] == pytest.approx(expected.tolist(), abs=2e-3)


def test_streamed_logprobs_cover_every_token_once(server):
    client = server.openai()
    whole = client.chat.completions.create(model="pixel", messages=HI, max_tokens=7, logprobs=True, top_logprobs=2,
                                           temperature=0)
    chunks = list(client.chat.completions.create(model="pixel", messages=HI, max_tokens=7, logprobs=True,
                                                 top_logprobs=2, temperature=0, stream=True))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in whole.choices[0].logprobs.content]
    without = client.chat.completions.create(model="pixel", messages=HI, max_tokens=3)
    assert without.choices[0].logprobs is None


def test_logprob_options_out_of_range_are_400s(server):
    assert "logprobs" in refused(server, "top_logprobs", top_logprobs=3)
    refused(server, "top_logprobs", logprobs=True, top_logprobs=21)


# --- what SillyTavern's Custom source always sends -------------------------------------------------------


def test_sillytaverns_fields_are_accepted_and_reach_the_sampler(server, submitted):
    response = server.openai().chat.completions.create(
        model="pixel", messages=HI, max_tokens=4, temperature=0.9, top_p=0.95, presence_penalty=0.4,
        frequency_penalty=0.3, logit_bias={}, seed=11, stop=[], extra_body={"top_k": 40, "min_p": 0.05})
    assert response.choices[0].finish_reason in ("length", "stop")
    sampling = submitted[0].sampling
    assert (sampling.top_k, sampling.presence_penalty, sampling.frequency_penalty) == (40, 0.4, 0.3)
    assert sampling.min_p == 0.05  # vLLM's and llama.cpp's extension, as OpenRouter-style clients send it
    assert sampling.stop == ["\nUser:"]  # the empty list adds nothing


@pytest.mark.parametrize("field, value", [
    ("logit_bias", {"99999999": -100}),  # a token this model does not have
    ("response_format", {"type": "grammar"}),
    ("tools", [{"type": "code_interpreter"}]),  # only function tools (tests/test_openai_tools.py)
    ("tool_choice", "auto"),  # tools are forced calls only
])
def test_what_cannot_be_honoured_is_a_400_naming_the_field(server, engine, field, value):
    assert field in refused(server, field, **{field: value})
    assert logged(engine, "user") == []


def test_neutral_values_of_unsupported_fields_are_accepted(server):
    response = server.openai().chat.completions.create(
        model="pixel", messages=HI, max_tokens=2, response_format={"type": "text"}, tool_choice="none", **GREEDY,
        extra_body={"logit_bias": {}, "modalities": ["text"]})
    assert response.usage.completion_tokens == 2


@pytest.mark.parametrize("seed", [2**63, -1])
def test_a_seed_the_generator_cannot_take_is_a_400_naming_the_bound(server, seed):
    message = refused(server, "seed", seed=seed)
    assert str(2**63) in message if seed > 0 else "0" in message


# --- re-rolls over the API --------------------------------------------------------------------------------


def test_resending_the_same_history_is_a_regeneration(server, engine):
    from runtime.training.curate import curate

    client = server.openai()
    chat = [{"role": "assistant", "content": "Beep! Pixel here."}, {"role": "user", "content": "Tell me a joke"}]
    first = client.chat.completions.create(model="pixel", messages=chat, max_tokens=4, temperature=1.0)
    again = client.chat.completions.create(model="pixel", messages=chat, max_tokens=4, temperature=1.0,
                                           stream=True)
    swipe_id = [c.model_extra["personae_message_id"] for c in again if c.choices and c.choices[0].finish_reason][0]
    asked = logged(engine, "user")
    assert len(asked) == 1  # the re-sent message is not logged twice
    swipe = engine.store.message(swipe_id)
    assert swipe["swipe_of"] == first.model_extra["personae_message_id"] and swipe["reply_to"] == asked[0]["id"]
    # The client carries on from the swipe: a new turn, not a re-roll.
    chat += [{"role": "assistant", "content": swipe["text"]}, {"role": "user", "content": "Another one"}]
    client.chat.completions.create(model="pixel", messages=chat, max_tokens=4)
    assert [m["text"] for m in logged(engine, "user")] == ["Tell me a joke", "Another one"]
    # The same last message after another history is not a re-roll either.
    client.chat.completions.create(model="pixel", messages=[{"role": "user", "content": "Another one"}],
                                   max_tokens=4)
    assert len(logged(engine, "user")) == 3 and sum(1 for r in logged(engine) if r["swipe_of"]) == 1
    dataset = curate(engine.store, engine.catalog.get("pixel"), engine.settings)
    assert dataset.dropped["swiped_away"] == 1  # curation trains on the swipe, not on both


@pytest.mark.real_model
def test_one_completion_per_shape_on_the_real_model(make_engine, real_base):
    engine = make_engine(real_base, max_new_tokens=24)
    live = LiveServer(engine)
    try:
        response = live.openai().chat.completions.create(
            model="professor-quill", messages=[{"role": "user", "content": "What is a comet?"}], n=2,
            max_completion_tokens=24, temperature=0.8, seed=5, presence_penalty=0.5, frequency_penalty=0.5,
            logprobs=True, top_logprobs=3, extra_body={"top_k": 40})
    finally:
        live.close()
    assert [c.index for c in response.choices] == [0, 1]
    for choice in response.choices:
        text = choice.message.content
        assert len(text.split()) >= 3 and sum(ch.isalpha() for ch in text) > len(text) / 2
        content = choice.logprobs.content
        assert content and all(e.logprob <= 0 and len(e.top_logprobs) == 3 for e in content)
    assert response.choices[0].message.content != response.choices[1].message.content


def test_n_choices_are_all_or_none_when_the_generator_is_busy(server, engine, monkeypatch):
    from runtime.generation.types import GeneratorBusy

    streams, submit = [], engine.generator.submit

    def second_is_busy(request):
        if streams:
            raise GeneratorBusy(3)
        streams.append(submit(request))
        return streams[-1]

    monkeypatch.setattr(engine.generator, "submit", second_is_busy)
    with pytest.raises(openai.RateLimitError):
        server.openai().chat.completions.create(model="pixel", messages=HI, n=2, max_tokens=4)
    assert streams[0].cancelled.is_set()  # the choice already queued is called off
    assert logged(engine, "user") == [] and logged(engine) == []
    assert engine.weights is None or not engine.weights._refs  # every lease went back


def test_leaving_an_n_choice_stream_cancels_every_choice(make_engine, tiny_base):
    import httpx

    engine = make_engine(tiny_base, temperature=0, max_new_tokens=400)
    live = LiveServer(engine)
    try:
        with httpx.stream("POST", live.url + "/v1/chat/completions", timeout=60, json={
                "model": "pixel", "stream": True, "max_tokens": 400, "n": 2, "seed": 1,
                "messages": [{"role": "user", "content": "A long story"}]}) as response:
            for index, _ in enumerate(response.iter_lines()):
                if index > 6:
                    break
        deadline = time.monotonic() + 30
        while engine.generator.active_rows and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.generator.active_rows == 0 and logged(engine) == []
    finally:
        live.close()


def test_logprob_bytes_rebuild_text_split_inside_a_character(tiny_base):
    from plugins.http.chat import TokenText

    tokens = TokenText(tiny_base.tokenizer)
    text = "héllo — ✓ ok"
    items = [tokens.item(i, -1.0) for i in tiny_base.tokenizer.encode(text, add_special_tokens=False)]
    assert any(item["token"].endswith("\ufffd") for item in items)  # ✓ is cut across tokens
    assert bytes(b for item in items for b in item["bytes"]).decode("utf-8") == text

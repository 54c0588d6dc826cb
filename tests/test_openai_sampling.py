"""seed, logit_bias and response_format as the official openai client sends them, against a live server."""

from __future__ import annotations

import json

import pytest
from openai_helpers import refused_by

HI = [{"role": "user", "content": "Hello there"}]


@pytest.fixture
def engine(make_engine, tiny_base):
    return make_engine(tiny_base, temperature=1.0, top_k=0, min_p=0.0, max_new_tokens=8, repetition_penalty=1.0)


def ask(server, **body):
    body.setdefault("messages", HI)
    return server.openai().chat.completions.create(model="pixel", **body)


def refused(server, param, **body):
    return refused_by(ask, server, param, **body)


def test_seed_zero_is_a_real_seed_and_the_same_seed_gives_the_same_reply(server):
    first, again = (ask(server, seed=0).choices[0].message.content for _ in range(2))
    assert first == again and first
    other = ask(server, seed=1).choices[0].message.content
    assert other != first
    unseeded = {ask(server).choices[0].message.content for _ in range(2)}
    assert len(unseeded) == 2  # no seed: random each reply


def test_logit_bias_forces_and_bans_tokens(server, tiny_base):
    tokenizer = tiny_base.tokenizer
    hello = tokenizer.encode(" hello", add_special_tokens=False)
    assert len(hello) == 1
    forced = ask(server, logit_bias={str(hello[0]): 100}, max_tokens=3, seed=3)  # sampled, yet only " hello" can win
    assert forced.choices[0].message.content == "hello hello hello"
    greedy = ask(server, temperature=0, max_tokens=3, logprobs=True)
    first = greedy.choices[0].logprobs.content[0]
    first_id = tokenizer.convert_tokens_to_ids(tokenizer.convert_ids_to_tokens(
        tokenizer.encode(first.token, add_special_tokens=False))[0])
    banned = ask(server, temperature=0, max_tokens=3, logprobs=True, logit_bias={str(first_id): -100})
    assert banned.choices[0].logprobs.content[0].token != first.token


def test_logit_bias_out_of_range_is_a_400_naming_it(server, engine):
    assert "-100 to 100" in refused(server, "logit_bias", logit_bias={"5": 101})
    assert "token ids" in refused(server, "logit_bias", logit_bias={"hello": 5})
    assert "0 to" in refused(server, "logit_bias", logit_bias={str(10**7): -100})
    assert engine.store.query("select count(*) as n from messages")[0]["n"] == 0


def test_json_schema_replies_parse_and_follow_the_schema(server):
    schema = {"type": "object", "properties": {"mood": {"enum": ["happy", "sad"]}}, "required": ["mood"],
              "additionalProperties": False}
    # A random-weight model likes whitespace, which JSON allows; the bias keeps it short.
    response = ask(server, temperature=0, max_tokens=60, response_format={
        "type": "json_schema", "json_schema": {"name": "mood", "schema": schema}})
    choice = response.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    assert json.loads(choice.message.content)["mood"] in ("happy", "sad")


def test_response_formats_that_cannot_be_followed_are_400s(server):
    assert "json_schema.schema" in refused(server, "response_format", response_format={
        "type": "json_schema", "json_schema": {"name": "x"}})
    assert "json_object" in refused(server, "response_format", response_format={"type": "regex"})
    # Function calling is forced calls only: tools without tool_choice mean "auto", which is refused.
    assert "auto" in refused(server, "tool_choice", tools=[{"type": "function", "function": {"name": "f"}}])


@pytest.mark.real_model
def test_json_object_on_the_real_model_is_a_json_object(make_engine, real_base):
    from http_server import LiveServer

    engine = make_engine(real_base, max_new_tokens=80)
    live = LiveServer(engine)
    try:
        response = live.openai().chat.completions.create(
            model="professor-quill", messages=[{"role": "user", "content": "Describe a comet as JSON with the "
                                                "keys name and colour."}],
            temperature=0, max_tokens=80, response_format={"type": "json_object"})
    finally:
        live.close()
    choice = response.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    reply = json.loads(choice.message.content)
    assert isinstance(reply, dict) and reply

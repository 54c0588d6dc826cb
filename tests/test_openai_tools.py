"""Function calling as the official openai client does it: forced calls (tool_choice "required" or a named
function) against a live server, streamed and not, the result sent back, and what is refused."""

from __future__ import annotations

import json
from typing import Literal

import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai_helpers import refused_by
from pydantic import BaseModel

HI = [{"role": "user", "content": "How do you feel today?"}]
MOOD = {"type": "function", "function": {
    "name": "set_mood", "description": "Record the character's mood",
    "parameters": {"type": "object", "properties": {"mood": {"enum": ["happy", "sad"]}}, "required": ["mood"],
                   "additionalProperties": False}}}
ROLL = {"type": "function", "function": {
    "name": "roll_die", "description": "Roll a die",
    "parameters": {"type": "object", "properties": {"sides": {"enum": [6, 20]}}, "required": ["sides"],
                   "additionalProperties": False}}}
NAMED = {"type": "function", "function": {"name": "set_mood"}}


@pytest.fixture
def engine(make_engine, tiny_base):
    return make_engine(tiny_base, temperature=0, max_new_tokens=60, repetition_penalty=1.0)


def ask(server, **body):
    body.setdefault("messages", HI)
    body.setdefault("temperature", 0)
    return server.openai().chat.completions.create(model="pixel", **body)


def refused(server, param, **body):
    return refused_by(ask, server, param, **body)


def follows(name: str, arguments: str) -> bool:
    """The arguments parse and follow that function's parameters."""
    parsed = json.loads(arguments)
    if name == "set_mood":
        return set(parsed) == {"mood"} and parsed["mood"] in ("happy", "sad")
    return name == "roll_die" and set(parsed) == {"sides"} and parsed["sides"] in (6, 20)


def test_a_named_tool_choice_returns_that_call_with_arguments_following_its_parameters(server, engine, prompt_spy):
    spy = prompt_spy(engine)
    response = ask(server, tools=[MOOD, ROLL], tool_choice=NAMED)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "set_mood"
    assert follows("set_mood", call.function.arguments), call.function.arguments
    # The model was told which function to call and what its arguments are.
    system = "\n".join(m["content"] for m in spy.prompts[-1] if m["role"] == "system")
    assert "set_mood (Record the character's mood)" in system and '"enum": ["happy", "sad"]' in system
    # Logged, but marked: a forced call is not the character speaking, so curation leaves it out.
    from runtime.training.curate import curate

    row = engine.store.message(response.model_extra["personae_message_id"])
    assert json.loads(row["meta"])["structured"] is True
    assert curate(engine.store, engine.catalog.get("pixel"), engine.settings).dropped["structured"] == 1


def test_required_calls_one_of_the_tools_for_every_choice(server):
    response = ask(server, tools=[MOOD, ROLL], tool_choice="required", n=2, seed=5, temperature=1.0)
    assert [c.index for c in response.choices] == [0, 1]
    for choice in response.choices:
        (call,) = choice.message.tool_calls
        assert choice.finish_reason == "tool_calls"
        assert call.function.name in ("set_mood", "roll_die") and follows(call.function.name, call.function.arguments)


@pytest.mark.parametrize("tool_choice", [NAMED, "required"])
def test_streamed_calls_build_the_same_call_in_openais_chunk_shape(server, tool_choice):
    chunks = list(ask(server, tools=[MOOD], tool_choice=tool_choice, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    pieces = [d.tool_calls[0] for d in deltas if d.tool_calls]
    assert pieces[0].id.startswith("call_") and pieces[0].function.name == "set_mood"
    assert all(p.id is None and p.function.name is None for p in pieces[1:])  # id and name come once
    if tool_choice == NAMED:
        assert len(pieces) > 1  # a named call's arguments stream as they are made
    arguments = "".join(p.function.arguments for p in pieces)
    assert follows("set_mood", arguments), arguments
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["tool_calls"]
    assert not any(d.content for d in deltas)
    # The openai client's own stream accumulator puts the same call together.
    with server.openai().chat.completions.stream(model="pixel", messages=HI, temperature=0, tools=[MOOD],
                                                 tool_choice=tool_choice) as stream:
        final = stream.get_final_completion()
    assert follows("set_mood", final.choices[0].message.tool_calls[0].function.arguments)


def test_the_clients_parse_helper_gets_a_pydantic_object(server):
    class Mood(BaseModel):
        mood: Literal["happy", "sad"]  # a free string from a random-weight model would run to max_tokens

    completion = server.openai().chat.completions.parse(
        model="pixel", messages=HI, temperature=0, tools=[openai.pydantic_function_tool(Mood)],
        tool_choice={"type": "function", "function": {"name": "Mood"}}, max_tokens=60)
    parsed = completion.choices[0].message.tool_calls[0].function.parsed_arguments
    assert isinstance(parsed, Mood) and parsed.mood in ("happy", "sad")


def test_the_result_sent_back_is_what_the_character_answers(server, engine, prompt_spy):
    spy = prompt_spy(engine)
    first = ask(server, tools=[MOOD], tool_choice=NAMED)
    call = first.choices[0].message.tool_calls[0]
    chat = HI + [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "saved"}]
    second = ask(server, messages=chat, tools=[MOOD], tool_choice="none", max_tokens=6)
    assert second.choices[0].finish_reason in ("stop", "length") and second.choices[0].message.tool_calls is None
    asked = engine.store.query("select text from messages where role = 'user' order by id")
    assert [m["text"] for m in asked] == ["How do you feel today?", "Result of set_mood: saved"]
    # The prompt holds the call as the model wrote it, then the result.
    assert spy.chat()[-2:] == [json.dumps({"name": "set_mood", "arguments": json.loads(call.function.arguments)}),
                               "Result of set_mood: saved"]


def test_none_ignores_the_tools(server):
    response = ask(server, tools=[MOOD], tool_choice="none", max_tokens=3)
    assert response.choices[0].message.tool_calls is None and response.choices[0].finish_reason == "length"


@pytest.mark.parametrize("body, param, words", [
    ({"tools": [MOOD]}, "tool_choice", "auto"),  # no tool_choice means "auto"
    ({"tools": [MOOD], "tool_choice": "auto"}, "tool_choice", "auto"),
    ({"tools": [MOOD], "tool_choice": {"type": "function", "function": {"name": "fly"}}}, "tool_choice", "fly"),
    ({"tool_choice": "required"}, "tool_choice", "needs tools"),
    ({"tools": [{"type": "retrieval"}], "tool_choice": "required"}, "tools", "only function tools"),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}], "tool_choice": "required"}, "tools",
     "letters, digits"),
    ({"tools": [MOOD, MOOD], "tool_choice": "required"}, "tools", "twice"),
    ({"tools": [MOOD], "tool_choice": NAMED, "response_format": {"type": "json_object"}}, "response_format", "one"),
    ({"extra_body": {"functions": [MOOD["function"]]}}, "functions", "tools"),
])
def test_calls_that_cannot_be_followed_are_400s_naming_the_field(server, engine, body, param, words):
    assert words in refused(server, param, **body)
    assert engine.store.query("select count(*) as n from messages")[0]["n"] == 0


@pytest.mark.real_model
def test_smollm2_fills_in_a_call_and_then_answers_its_result(make_engine, real_base):
    from http_server import LiveServer

    weather = {"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                       "required": ["city"], "additionalProperties": False}}}
    live = LiveServer(make_engine(real_base, max_new_tokens=60))
    try:
        client = live.openai()
        chat = [{"role": "user", "content": "What is the weather like in Paris?"}]
        first = client.chat.completions.create(model="professor-quill", messages=chat, temperature=0, tools=[weather],
                                               tool_choice="required")
        call = first.choices[0].message.tool_calls[0]
        assert first.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
        assert isinstance(json.loads(call.function.arguments)["city"], str)
        chat += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "Rain, 12 degrees"}]
        second = client.chat.completions.create(model="professor-quill", messages=chat, temperature=0,
                                                max_tokens=40)
    finally:
        live.close()
    assert second.choices[0].message.content.strip()


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=10)
TOOL = st.fixed_dictionaries({"type": st.sampled_from(["function", "x"]), "function": st.fixed_dictionaries(
    {"name": st.sampled_from(["f", "g", "bad name"]) | JSON, "parameters": JSON | st.just({"type": "object"})})})
CHOICE = JSON | st.sampled_from(["none", "auto", "required"]) | st.fixed_dictionaries(
    {"type": st.just("function"), "function": st.fixed_dictionaries({"name": JSON | st.just("f")})})
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "tool"]), "content": st.text(max_size=5),
                                 "tool_calls": JSON | st.just([{"id": ["x"], "function": {"name": "f"}}]),
                                 "tool_call_id": JSON})


@settings(max_examples=150, deadline=None)
@given(st.lists(TOOL | JSON, max_size=3) | JSON, CHOICE, st.lists(MESSAGE, max_size=4))
def test_any_tools_tool_choice_and_tool_messages_give_a_plan_or_a_named_problem(tools, choice, messages):
    from plugins.http.openai_schema import ChatCompletionRequest
    from plugins.http.tools import chat_of

    body = ChatCompletionRequest(model="pixel", messages=messages, tools=tools, tool_choice=choice)
    problem = body.problem()
    if problem is None:
        plan = body.tool_plan()
        assert (body.sampling()["response_format"] is not None) == (plan is not None)
        if plan is not None:
            assert plan.instruction() and plan.call("cut sh")[1] is not None
    else:
        assert problem[0] in ("tools", "tool_choice") and problem[1]
    assert all(m["role"] in ("user", "assistant") for m in chat_of(body.messages))

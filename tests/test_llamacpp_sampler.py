"""backend = "llamacpp" picking tokens with llama.cpp's own sampler chain: the same greedy replies as the
runtime's Python sampler, seeded replies that repeat, and the requests that keep the Python sampler.

Runs the real SmolLM2 Q4_1 through llama-cpp-python (installed by `make llamacpp`).
"""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = [pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                 reason="llama-cpp-python is not installed; `make llamacpp` compiles it"),
              pytest.mark.real_model]
TOKENS = 40


@pytest.fixture
def generators(make_engine, real_base):
    """{sampler: generator} for the chain ("llamacpp") and the Python sampler, one thread each."""
    return {name: make_engine(real_base, backend="llamacpp", threads=1,
                              plugins={"llamacpp": {"sampler": name, "slots": 2}}).generator
            for name in ("llamacpp", "python")}


@pytest.fixture
def prompt(real_base):
    return real_base.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Tell me about your ship and the sea."}], add_generation_prompt=True,
        tokenize=True, return_dict=False)


def reply(generator, prompt, **settings):
    from runtime.generation.types import Request, SamplingSettings

    stream = generator.submit(Request(list(prompt), SamplingSettings(**{"max_new_tokens": TOKENS, **settings})))
    stream.result()
    assert stream.error is None
    return stream


GREEDY = [
    {"repetition_penalty": 1.0},
    {"repetition_penalty": 1.3, "repeat_last_n": 64},  # the window reaches back into the prompt
    {"repetition_penalty": 1.2, "repeat_last_n": -1, "frequency_penalty": 0.6, "presence_penalty": 0.4},
    {"repetition_penalty": 1.0, "logit_bias": {"13": -100, "28": 4.5}},
]


@pytest.mark.parametrize("settings", GREEDY, ids=["plain", "window-64", "whole-prompt+openai", "logit-bias"])
def test_greedy_replies_are_the_python_samplers(generators, prompt, settings):
    chain = reply(generators["llamacpp"], prompt, temperature=0, **settings)
    python = reply(generators["python"], prompt, temperature=0, **settings)
    assert generators["llamacpp"].stats["chain_rows"] == 1 and generators["llamacpp"].stats["python_rows"] == 0
    assert generators["python"].stats["python_rows"] == 1
    assert chain.text == python.text and chain.text.strip()
    assert chain.completion_tokens == python.completion_tokens and chain.finish_reason == python.finish_reason


def test_end_of_sequence_waits_for_min_new_tokens_then_comes(generators, prompt, real_base):
    eos = real_base.tokenizer.eos_token_id
    forced = {"temperature": 0, "logit_bias": {eos: 100.0}, "min_new_tokens": 5, "repetition_penalty": 1.0}
    chain, python = (reply(generators[name], prompt, **forced) for name in ("llamacpp", "python"))
    assert chain.finish_reason == "stop" and chain.completion_tokens == 6  # 5 banned from ending, then the end
    assert (chain.text, chain.completion_tokens) == (python.text, python.completion_tokens) and chain.text


def test_a_seeded_reply_repeats_and_another_seed_differs(generators, prompt):
    sampled = {"temperature": 0.9, "top_k": 50, "top_p": 0.95, "min_p": 0.05, "repetition_penalty": 1.1}  # guarded
    gen = generators["llamacpp"]
    first, again = reply(gen, prompt, seed=11, **sampled), reply(gen, prompt, seed=11, **sampled)
    other = reply(gen, prompt, seed=12, **sampled)
    assert gen.stats["chain_rows"] == 3
    assert first.text == again.text and first.text.strip()
    assert other.text != first.text
    greedy = reply(gen, prompt, temperature=0, repetition_penalty=1.0)
    assert reply(gen, prompt, temperature=0.7, top_k=1, repetition_penalty=1.0, seed=3, guard=False).text == greedy.text


def test_logprobs_json_and_dry_keep_the_python_sampler(generators, prompt):
    from plugins.llamacpp.sampler import python_only
    from runtime.generation.types import SamplingSettings

    gen = generators["llamacpp"]
    asked = reply(gen, prompt, temperature=0, repetition_penalty=1.0, logprobs=2)
    assert len(asked.logprobs) == asked.completion_tokens and all(len(lp.top) == 2 for lp in asked.logprobs)
    assert asked.text == reply(gen, prompt, temperature=0, repetition_penalty=1.0).text  # same tokens either way
    json_reply = reply(gen, prompt, temperature=0, response_format={"type": "json_object"})
    assert json_reply.text.lstrip().startswith("{")  # the JSON mask ran
    reply(gen, prompt, temperature=0.8, seed=1, dry_multiplier=0.8)
    assert gen.stats["python_rows"] == 3 and gen.stats["chain_rows"] == 1
    assert python_only(SamplingSettings(logprobs=0)) == "logprobs"
    assert python_only(SamplingSettings()) is None  # the config's defaults: the chain


def test_the_guard_gets_the_models_own_probability_without_a_copy(real_base, prompt):
    import numpy as np

    from plugins.llamacpp.native import Lane, Model
    from plugins.llamacpp.sampler import probability
    from runtime.models.base import packaged_gguf

    model = Model(packaged_gguf(), threads=1)
    lane = Lane(model, None, slots=1, n_ctx=512)
    index = lane.decode([(lane.slots[0], prompt)])[0]
    logits = lane.logits(index).astype(np.float64)
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    for token in (int(np.argmax(logits)), 42):
        assert probability(model.lib, lane.ctx, index, model.n_vocab, token) == pytest.approx(expected[token], rel=1e-5)
    lane.close()
    model.close()

"""RowSampler's seed (0 is a seed), OpenAI's logit_bias, and response_format's JSON mask (lm-format-enforcer)."""

from __future__ import annotations

import json

import pytest
import torch

from runtime.config import load_settings
from runtime.generation.sampling import LogitBias, RowSampler
from runtime.generation.structured import BadResponseFormat, JsonLogitsProcessor, schema_of
from runtime.generation.types import SamplingSettings

VOCAB = 50


def sampled(**options) -> SamplingSettings:
    return SamplingSettings(**{"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0,
                               "repetition_penalty": 1.0, **options})


def draws(settings, count=40):
    logits = torch.zeros(1, VOCAB)  # uniform: every draw is the RNG's alone
    sampler = RowSampler(settings, 1, set())
    return [sampler.choose(torch.tensor([1]), logits) for _ in range(count)]


def test_seed_zero_is_a_seed_and_the_same_seed_draws_the_same_tokens():
    assert draws(sampled(seed=0)) == draws(sampled(seed=0))
    assert draws(sampled(seed=0)) != draws(sampled(seed=1))
    assert draws(sampled(seed=None)) != draws(sampled(seed=None))  # no seed: random each reply


def test_the_configs_minus_one_means_random_and_a_requests_zero_is_kept():
    settings = load_settings({})
    assert settings.seed == -1 and SamplingSettings.from_sources(settings).seed is None
    assert SamplingSettings.from_sources(settings, seed=0).seed == 0
    assert SamplingSettings.from_sources(load_settings({"seed": 0})).seed == 0


def test_logit_bias_adds_to_the_named_tokens_only():
    scores = LogitBias({3: -100, 7: 2.5})(torch.tensor([[1]]), torch.zeros(1, VOCAB))
    expected = torch.zeros(1, VOCAB)
    expected[0, 3], expected[0, 7] = -100, 2.5
    assert torch.equal(scores, expected)
    assert torch.equal(LogitBias({VOCAB + 5: 100})(torch.tensor([[1]]), torch.ones(1, VOCAB)), torch.ones(1, VOCAB))


def test_logit_bias_bans_and_forces_tokens_when_greedy_and_sampled():
    logits = torch.zeros(1, VOCAB)
    logits[0, 5] = 3.0
    greedy = RowSampler(SamplingSettings(temperature=0, repetition_penalty=1.0, logit_bias={5: -100}), 1, set())
    assert greedy.choose(torch.tensor([1]), logits) != 5
    forced = RowSampler(sampled(seed=3, logit_bias={11: 100}), 1, set())
    assert {forced.choose(torch.tensor([1]), logits) for _ in range(50)} == {11}


def test_response_format_kinds():
    assert schema_of(None) is None and schema_of({"type": "text"}) is None
    assert schema_of({"type": "json_object"}) == {"type": "object"}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert schema_of({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}) == schema
    with pytest.raises(BadResponseFormat, match="json_schema.schema"):
        schema_of({"type": "json_schema", "json_schema": {"name": "x"}})
    with pytest.raises(BadResponseFormat, match="'grammar' is not supported.*json_object"):
        schema_of({"type": "grammar"})


def test_the_json_mask_lets_only_valid_json_through_and_ends_it(tiny_base):
    """Random logits (a model that knows nothing) still give schema-valid JSON, ended by end-of-sequence."""
    tokenizer = tiny_base.tokenizer
    # (lm-format-enforcer checks types, enums and required keys; not numeric bounds, and an integer may have an exponent.)
    schema = {"type": "object", "properties": {"mood": {"enum": ["happy", "sad"]}, "ok": {"type": "boolean"}},
              "required": ["mood", "ok"], "additionalProperties": False}
    prompt = tokenizer("Say it as JSON:", add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    mask = JsonLogitsProcessor(schema, tokenizer, len(prompt))
    ids, rng = list(prompt), torch.Generator().manual_seed(0)
    for _ in range(200):
        # Whitespace is JSON too: push it down so the random walk gets on with the object.
        logits = torch.randn(1, len(tokenizer), generator=rng)
        scores = mask(torch.tensor([ids]), logits)
        allowed = torch.isfinite(scores[0]).nonzero().flatten().tolist()
        assert allowed, "the mask must always leave a token"
        text_allowed = [t for t in allowed if not tokenizer.decode([t]).isspace()] or allowed
        token = max(text_allowed, key=lambda t: float(scores[0, t]))
        if token == eos:
            break
        ids.append(token)
    text = tokenizer.decode(ids[len(prompt):])
    reply = json.loads(text, parse_constant=lambda name: pytest.fail(f"not JSON: {name} in {text!r}"))
    assert reply["mood"] in ("happy", "sad") and isinstance(reply["ok"], bool) and set(reply) == {"mood", "ok"}, text


def test_the_vllm_backend_sends_seed_zero_logit_bias_and_response_format_on():
    from plugins.vllm.generator import completion_body
    from runtime.generation.types import Request

    fmt = {"type": "json_object"}
    body = completion_body(Request([1, 2], sampled(seed=0, logit_bias={7: -100.0}, response_format=fmt)), "m")
    assert body["seed"] == 0 and body["logit_bias"] == {"7": -100.0} and body["response_format"] == fmt
    assert "seed" not in completion_body(Request([1], sampled(seed=None)), "m")  # random: vLLM picks


def test_the_vllm_backend_asks_for_logprobs_as_token_ids_and_reads_them_back():
    from plugins.vllm.generator import completion_body, token_logprobs
    from runtime.generation.types import Request

    body = completion_body(Request([1, 2], sampled(logprobs=2)), "m")
    assert body["logprobs"] == 2 and body["return_tokens_as_token_ids"] is True
    assert "logprobs" not in completion_body(Request([1], sampled()), "m")
    # A streamed chunk's block as vLLM 0.32 writes it; the sampled token (9) is outside the top 2, so vLLM adds it.
    block = {"tokens": ["token_id:9", "token_id:2"], "token_logprobs": [-3.5, -0.1],
             "top_logprobs": [{"token_id:4": -0.2, "token_id:5": -1.0, "token_id:9": -3.5}, {"token_id:2": -0.1}]}
    scored = token_logprobs(block, 2, skip={2})  # 2: end-of-sequence, which has no entry locally either
    assert [(s.token, s.logprob, s.top) for s in scored] == [(9, -3.5, [(4, -0.2), (5, -1.0)])]

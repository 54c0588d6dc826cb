"""RowSampler's OpenAI options: presence/frequency penalties over the reply only, top_k, and recorded logprobs."""

from __future__ import annotations

import pytest
import torch

from runtime.generation.sampling import FrequencyPresencePenalty, RowSampler
from runtime.generation.types import SamplingSettings

VOCAB = 10


def greedy(**options) -> SamplingSettings:
    return SamplingSettings(temperature=0, repetition_penalty=1.0, **options)


def test_penalties_follow_openais_formula_over_generated_tokens_only():
    prompt = [3, 3, 3]  # the prompt repeats token 3: OpenAI's penalties do not count it
    ids = torch.tensor([prompt + [5, 5, 7]])
    scores = FrequencyPresencePenalty(len(prompt), frequency=0.25, presence=0.5)(ids, torch.zeros(1, VOCAB))
    # logit[t] -= frequency * count(t) + presence * (count(t) > 0)
    expected = torch.zeros(1, VOCAB)
    expected[0, 5] = -(0.25 * 2 + 0.5)
    expected[0, 7] = -(0.25 * 1 + 0.5)
    assert torch.equal(scores, expected)
    untouched = FrequencyPresencePenalty(len(prompt), frequency=0.25, presence=0.5)(torch.tensor([prompt]), torch.ones(1, VOCAB))
    assert torch.equal(untouched, torch.ones(1, VOCAB))


@pytest.mark.parametrize("options, chosen", [
    ({}, 5),                              # no penalty: the likeliest token again
    ({"frequency_penalty": 0.6}, 6),      # 1.0 - 0.6 < 0.5: the repeated token loses
    ({"presence_penalty": 0.6}, 6),
    ({"presence_penalty": -1.5, "frequency_penalty": 0.0}, 5),  # negative values encourage repeats
])
def test_a_greedy_row_applies_the_penalties(options, chosen):
    logits = torch.zeros(1, VOCAB)
    logits[0, 5], logits[0, 6] = 1.0, 0.5
    sampler = RowSampler(greedy(**options), prompt_length=2, eos=set())
    assert sampler.choose(torch.tensor([1, 2, 5]), logits) == chosen


def test_top_k_keeps_only_the_k_likeliest():
    logits = torch.tensor([[0.0, 3.0, 2.9, 2.8, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0]])
    ids = torch.tensor([1, 2])
    for k, allowed in ((1, {1}), (2, {1, 2})):
        sampler = RowSampler(SamplingSettings(temperature=1.0, top_p=1.0, repetition_penalty=1.0, top_k=k, seed=4), 2, set())
        drawn = {sampler.choose(ids, logits) for _ in range(200)}
        assert drawn == allowed
    open_ended = RowSampler(SamplingSettings(temperature=1.0, top_p=1.0, min_p=0, repetition_penalty=1.0, top_k=0,
                                              seed=4), 2, set())
    assert len({open_ended.choose(ids, logits) for _ in range(200)}) > 3  # 0 means off


def test_logprobs_are_recorded_only_when_asked():
    logits = torch.randn(1, VOCAB, generator=torch.Generator().manual_seed(0))
    quiet = RowSampler(greedy(), 1, set())
    quiet.choose(torch.tensor([1]), logits)
    assert quiet.scored is None
    sampler = RowSampler(SamplingSettings(temperature=1.0, top_p=0.5, logprobs=3, seed=9), 1, set())
    token = sampler.choose(torch.tensor([1]), logits)
    reference = torch.log_softmax(logits[0], dim=-1)  # the model's distribution, before temperature and top_p
    assert sampler.scored.token == token and sampler.scored.logprob == pytest.approx(float(reference[token]))
    assert [t for t, _ in sampler.scored.top] == torch.topk(reference, 3).indices.tolist()
    assert [v for _, v in sampler.scored.top] == pytest.approx(torch.topk(reference, 3).values.tolist())

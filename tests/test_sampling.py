"""Chat sampling processors: the repetition window, OpenAI penalties, truncation order (CPU, no model)."""

import pytest
import torch
from transformers import (
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from runtime.generation.sampling import FrequencyPresencePenalty, RecentRepetitionPenalty
from runtime.generation.sampling import build_processors as build_row_processors
from runtime.generation.types import SamplingSettings


def build_processors(settings, prompt_length):
    return build_row_processors(settings, prompt_length, set())


def scores(values):
    return torch.tensor([values], dtype=torch.float32)


def test_repetition_penalty_only_over_window():
    ids = torch.tensor([[0, 1, 2, 3]])
    out = RecentRepetitionPenalty(2.0, last_n=2)(ids, scores([4.0, 4.0, 4.0, -4.0, 4.0]))
    # tokens 0 and 1 are outside the window: untouched; 2 (positive) divided, 3 (negative) multiplied
    assert out.tolist() == [[4.0, 4.0, 2.0, -8.0, 4.0]]


def test_repetition_penalty_whole_row_and_off():
    ids = torch.tensor([[0, 1]])
    assert RecentRepetitionPenalty(2.0, last_n=-1)(ids, scores([2.0, 2.0, 2.0])).tolist() == [[1.0, 1.0, 2.0]]
    assert RecentRepetitionPenalty(2.0, last_n=0)(ids, scores([2.0, 2.0, 2.0])).tolist() == [[2.0, 2.0, 2.0]]


def test_repeated_id_in_window_penalised_once():
    ids = torch.tensor([[1, 1, 1]])
    out = RecentRepetitionPenalty(2.0, last_n=64)(ids, scores([2.0, 2.0]))
    assert out.tolist() == [[2.0, 1.0]]


def test_frequency_presence_only_generated_tokens():
    ids = torch.tensor([[0, 0, 0, 1, 1, 2]])  # prompt = first 3 ids
    out = FrequencyPresencePenalty(prompt_length=3, frequency=0.5, presence=1.0)(ids, scores([0.0, 0.0, 0.0, 0.0]))
    # token 0 only in the prompt: no penalty; 1 twice: 2*0.5+1; 2 once: 0.5+1
    assert out.tolist() == [[0.0, -2.0, -1.5, 0.0]]


def test_frequency_presence_nothing_generated():
    ids = torch.tensor([[5, 6]])
    s = scores([1.0] * 8)
    assert torch.equal(FrequencyPresencePenalty(2, 1.0, 1.0)(ids, s), s)


def test_build_processors_order_and_types():
    settings = SamplingSettings(temperature=0.7, top_p=0.9, top_k=40, min_p=0.1, repetition_penalty=1.1,
                                repeat_last_n=64, frequency_penalty=0.2, presence_penalty=0.1)
    kinds = [type(p) for p in build_processors(settings, prompt_length=10)]
    assert kinds == [RecentRepetitionPenalty, FrequencyPresencePenalty, TopKLogitsWarper, TopPLogitsWarper,
                     MinPLogitsWarper, TemperatureLogitsWarper]


def test_build_processors_offs():
    settings = SamplingSettings(temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, repetition_penalty=1.0)
    assert len(build_processors(settings, 3)) == 0
    greedy = SamplingSettings(temperature=0, repetition_penalty=1.2)
    assert [type(p) for p in build_processors(greedy, 3)] == [RecentRepetitionPenalty]


def test_min_p_drops_unlikely_tokens():
    settings = SamplingSettings(temperature=1.0, top_p=1.0, top_k=0, min_p=0.1, repetition_penalty=1.0)
    processors = build_processors(settings, 1)
    probs = torch.tensor([[0.6, 0.3, 0.05, 0.05]])
    out = processors(torch.tensor([[0]]), probs.log())
    assert torch.isinf(out[0, 2:]).all() and torch.isfinite(out[0, :2]).all()


def test_window_does_not_penalise_card_words():
    # a card word (id 7) said 300 tokens ago is not penalised with the default window
    settings = SamplingSettings(temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, repetition_penalty=1.3)
    ids = torch.tensor([[7] + [1] * 300])
    out = build_processors(settings, 200)(ids, scores([1.0] * 8))
    assert out[0, 7] == 1.0 and out[0, 1] == pytest.approx(1.0 / 1.3)

"""How one row picks its next token: transformers' LogitsProcessors built from its SamplingSettings, and its own RNG."""

from __future__ import annotations

from runtime.generation.types import SamplingSettings


class RowSampler:
    """The processors, greedy flag and random generator of one reply, so rows never share sampling state."""

    def __init__(self, sampling: SamplingSettings, prompt_length: int, eos: set[int]):
        import torch
        from transformers import (
            LogitsProcessorList,
            MinNewTokensLengthLogitsProcessor,
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopPLogitsWarper,
        )

        processors = LogitsProcessorList()
        if sampling.min_new_tokens and eos:
            processors.append(MinNewTokensLengthLogitsProcessor(prompt_length, int(sampling.min_new_tokens),
                                                                sorted(eos)))
        if sampling.repetition_penalty and sampling.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(float(sampling.repetition_penalty)))
        self.greedy = not sampling.temperature or sampling.temperature <= 0
        self.rng = None
        if not self.greedy:
            processors.append(TemperatureLogitsWarper(float(sampling.temperature)))
            if sampling.top_p is not None and 0 < sampling.top_p < 1:
                processors.append(TopPLogitsWarper(float(sampling.top_p)))
            self.rng = torch.Generator()
            if sampling.seed:
                self.rng.manual_seed(int(sampling.seed))
            else:
                self.rng.seed()
        self.processors = processors

    def choose(self, ids, logits) -> int:
        """The next token after `ids` (1-D, prompt and reply so far) given the last position's logits [1, vocab]."""
        import torch

        scores = self.processors(ids.unsqueeze(0), logits) if self.processors else logits
        if self.greedy:
            return int(torch.argmax(scores, dim=-1)[0])
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.rng)[0, 0])

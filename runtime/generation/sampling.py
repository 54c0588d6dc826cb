"""How one row picks its next token: transformers' LogitsProcessors built from its SamplingSettings, and its own RNG."""

from __future__ import annotations

from runtime.generation.types import SamplingSettings, TokenLogprob


def openai_penalties(prompt_length: int, presence: float, frequency: float):
    """OpenAI's presence/frequency penalties as a LogitsProcessor, over the reply's own tokens only.

    logit[t] -= frequency * count(t) + presence * (count(t) > 0), counted over generated tokens
    (transformers' RepetitionPenaltyLogitsProcessor is multiplicative and counts the prompt too).
    """
    import torch
    from transformers import LogitsProcessor

    class OpenAIPenalties(LogitsProcessor):
        def __call__(self, input_ids, scores):
            generated = input_ids[:, prompt_length:]
            if generated.shape[1] == 0:
                return scores
            counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
            return scores - frequency * counts - presence * (counts > 0).to(scores.dtype)

    return OpenAIPenalties()


class RowSampler:
    """The processors, greedy flag and random generator of one reply, so rows never share sampling state."""

    def __init__(self, sampling: SamplingSettings, prompt_length: int, eos: set[int]):
        import torch
        from transformers import (
            LogitsProcessorList,
            MinNewTokensLengthLogitsProcessor,
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        processors = LogitsProcessorList()
        if sampling.min_new_tokens and eos:
            processors.append(MinNewTokensLengthLogitsProcessor(prompt_length, int(sampling.min_new_tokens),
                                                                sorted(eos)))
        if sampling.repetition_penalty and sampling.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(float(sampling.repetition_penalty)))
        if sampling.presence_penalty or sampling.frequency_penalty:
            processors.append(openai_penalties(prompt_length, float(sampling.presence_penalty or 0),
                                               float(sampling.frequency_penalty or 0)))
        self.greedy = not sampling.temperature or sampling.temperature <= 0
        self.rng = None
        if not self.greedy:
            processors.append(TemperatureLogitsWarper(float(sampling.temperature)))
            if sampling.top_k and sampling.top_k > 0:  # 0 (or -1, vLLM's spelling) = off
                processors.append(TopKLogitsWarper(int(sampling.top_k)))
            if sampling.top_p is not None and 0 < sampling.top_p < 1:
                processors.append(TopPLogitsWarper(float(sampling.top_p)))
            self.rng = torch.Generator()
            if sampling.seed:
                self.rng.manual_seed(int(sampling.seed))
            else:
                self.rng.seed()
        self.processors = processors
        self.top_logprobs = sampling.logprobs  # None: the request did not ask for logprobs
        self.scored: TokenLogprob | None = None  # the last chosen token's logprob, when asked

    def choose(self, ids, logits) -> int:
        """The next token after `ids` (1-D, prompt and reply so far) given the last position's logits [1, vocab]."""
        import torch

        scores = self.processors(ids.unsqueeze(0), logits) if self.processors else logits
        if self.greedy:
            token = int(torch.argmax(scores, dim=-1)[0])
        else:
            probs = torch.softmax(scores, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=self.rng)[0, 0])
        if self.top_logprobs is not None:
            self.scored = self._logprobs(logits[0], token)
        return token

    def _logprobs(self, logits, token: int) -> TokenLogprob:
        """The model's own log-probabilities (before penalties, temperature and truncation, like vLLM's default)."""
        import torch

        logprobs = torch.log_softmax(logits.float(), dim=-1)
        top = []
        if self.top_logprobs:
            values, indices = torch.topk(logprobs, int(self.top_logprobs))
            top = list(zip(indices.tolist(), values.tolist()))
        return TokenLogprob(token, float(logprobs[token]), top)

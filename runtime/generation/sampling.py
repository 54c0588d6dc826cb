"""How one row picks its next token: penalties, truncation and temperature (llama.cpp's order), its own RNG.

Order: OpenAI's logit_bias and response_format's JSON mask first (they say which tokens may come at all),
a repetition penalty over only the last `repeat_last_n` tokens (llama.cpp's window, so the card
and the example dialogues are not penalised), OpenAI frequency/presence penalties over the reply's own
tokens, the DRY sequence penalty (when `dry_multiplier` > 0; transformers has no DRY processor), then top_k, top_p and min_p (transformers' warpers) and temperature last, so min_p's threshold
is relative to the model's own distribution. The raw probability of each chosen token (softmax at
temperature 1, before any processor) is kept for the degeneration guard.
"""

from __future__ import annotations

from runtime.generation.structured import BadResponseFormat, JsonLogitsProcessor, schema_of
from runtime.generation.types import SamplingSettings, TokenLogprob


class RecentRepetitionPenalty:
    """transformers' CTRL repetition penalty, over the last `last_n` ids only (-1: all of them)."""

    def __init__(self, penalty: float, last_n: int):
        self.penalty, self.last_n = penalty, last_n

    def __call__(self, input_ids, scores):
        import torch

        if self.last_n == 0 or input_ids.shape[-1] == 0:
            return scores
        window = input_ids if self.last_n < 0 else input_ids[:, -self.last_n:]
        picked = torch.gather(scores, 1, window)
        picked = torch.where(picked < 0, picked * self.penalty, picked / self.penalty)
        return scores.scatter(1, window, picked)


class FrequencyPresencePenalty:
    """OpenAI's penalties: logit -= count * frequency + (count > 0) * presence, over the generated tokens."""

    def __init__(self, prompt_length: int, frequency: float, presence: float):
        self.prompt_length, self.frequency, self.presence = prompt_length, frequency, presence

    def __call__(self, input_ids, scores):
        import torch

        generated = input_ids[:, self.prompt_length:]
        if generated.shape[-1] == 0:
            return scores
        counts = torch.zeros_like(scores)
        counts.scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - counts * self.frequency - (counts > 0).to(scores.dtype) * self.presence


DRY_BREAKERS = ("\n", ":", '"', "*")  # llama.cpp's default sequence breakers
DRY_LONGEST = 50  # match lengths are capped, so base ** length stays finite (llama.cpp caps too)


class DryPenalty:
    """DRY ("don't repeat yourself", p-e-w's design as in llama.cpp and text-generation-webui).

    A token that would continue a sequence already in the last `last_n` ids (-1: all, the prompt too)
    loses multiplier * base ** (length - allowed_length) logits, length being how many ids before it
    already repeat; a loop's cost grows every time round. Breaker tokens (newline, colon, quote,
    asterisk) end a match, so formatting and speaker names repeat freely.
    """

    def __init__(self, multiplier: float, base: float, allowed_length: int, last_n: int, breakers: frozenset):
        self.multiplier, self.base, self.allowed, self.last_n = multiplier, base, allowed_length, last_n
        self.breakers = breakers

    def __call__(self, input_ids, scores):
        ids = (input_ids[0] if self.last_n < 0 else input_ids[0, -self.last_n:]).tolist()
        if len(ids) < 2 or ids[-1] in self.breakers:
            return scores
        end, longest = len(ids) - 1, {}
        for i in range(end - 1, -1, -1):  # every earlier place the last id occurred: its successor repeats
            if ids[i] != ids[end]:
                continue
            length = 1
            while length <= i and length < DRY_LONGEST and ids[i - length] == ids[end - length] \
                    and ids[i - length] not in self.breakers:
                length += 1
            following = ids[i + 1]
            if following not in self.breakers and length > longest.get(following, 0):
                longest[following] = length
        penalised = {t: n for t, n in longest.items() if n >= self.allowed}
        if not penalised:
            return scores
        scores = scores.clone()
        for token, length in penalised.items():
            scores[0, token] -= self.multiplier * self.base ** (length - self.allowed)
        return scores


_breakers: dict[int, frozenset] = {}


def dry_breakers(tokenizer) -> frozenset:
    """Ids of every token whose text holds a sequence breaker (computed once per tokenizer)."""
    key = id(tokenizer)
    if key not in _breakers:
        texts = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        decoded = [tokenizer.convert_tokens_to_string([t]) if t else "" for t in texts]
        _breakers[key] = frozenset(i for i, text in enumerate(decoded) if any(b in text for b in DRY_BREAKERS))
    return _breakers[key]


class LogitBias:
    """OpenAI's logit_bias: {token id: bias in [-100, 100]} added to the logits (-100 bans a token, 100 forces it)."""

    def __init__(self, bias: dict[int, float]):
        self.bias = {int(token): float(value) for token, value in bias.items()}
        self.vector = None

    def __call__(self, input_ids, scores):
        import torch

        if self.vector is None or self.vector.shape[-1] != scores.shape[-1]:
            self.vector = torch.zeros(scores.shape[-1], dtype=scores.dtype, device=scores.device)
            tokens = [t for t in self.bias if 0 <= t < scores.shape[-1]]
            self.vector[tokens] = torch.tensor([self.bias[t] for t in tokens], dtype=scores.dtype)
        return scores + self.vector


def build_processors(sampling: SamplingSettings, prompt_length: int, eos: set[int], tokenizer=None, avoid=()):
    """The LogitsProcessorList of one row whose first `prompt_length` ids are the prompt (`tokenizer`: for JSON and DRY).

    `avoid`: token runs whose last token may not follow the others (a retry after a copy; runtime.generation.avoid).
    """
    from transformers import (
        LogitsProcessorList,
        MinNewTokensLengthLogitsProcessor,
        MinPLogitsWarper,
        NoBadWordsLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    processors = LogitsProcessorList()
    if sampling.logit_bias:
        processors.append(LogitBias(sampling.logit_bias))
    schema = schema_of(sampling.response_format)
    if schema is not None:
        if tokenizer is None:
            raise BadResponseFormat("response_format needs the generator's tokenizer; this sampler has none")
        processors.append(JsonLogitsProcessor(schema, tokenizer, prompt_length))
    if avoid:
        processors.append(NoBadWordsLogitsProcessor([list(run) for run in avoid]))
    if sampling.min_new_tokens and eos:
        processors.append(MinNewTokensLengthLogitsProcessor(prompt_length, int(sampling.min_new_tokens), sorted(eos)))
    if sampling.repetition_penalty and sampling.repetition_penalty != 1.0 and sampling.repeat_last_n:
        processors.append(RecentRepetitionPenalty(float(sampling.repetition_penalty), int(sampling.repeat_last_n)))
    if sampling.frequency_penalty or sampling.presence_penalty:
        processors.append(FrequencyPresencePenalty(prompt_length, float(sampling.frequency_penalty),
                                                      float(sampling.presence_penalty)))
    if sampling.dry_multiplier and sampling.dry_multiplier > 0:
        breakers = dry_breakers(tokenizer) if tokenizer is not None else frozenset()
        processors.append(DryPenalty(float(sampling.dry_multiplier), float(sampling.dry_base),
                                     int(sampling.dry_allowed_length), int(sampling.dry_last_n), breakers))
    if not sampling.temperature or sampling.temperature <= 0:
        return processors  # greedy: only the penalties change which token wins
    if sampling.top_k and sampling.top_k > 0:
        processors.append(TopKLogitsWarper(int(sampling.top_k)))
    if sampling.top_p is not None and 0 < sampling.top_p < 1:
        processors.append(TopPLogitsWarper(float(sampling.top_p)))
    if sampling.min_p and 0 < sampling.min_p < 1:
        processors.append(MinPLogitsWarper(float(sampling.min_p)))
    if sampling.temperature != 1.0:
        processors.append(TemperatureLogitsWarper(float(sampling.temperature)))
    return processors


class RowSampler:
    """The processors, greedy flag and random generator of one reply, so rows never share sampling state."""

    def __init__(self, sampling: SamplingSettings, prompt_length: int, eos: set[int], tokenizer=None, avoid=()):
        import torch

        self.processors = build_processors(sampling, prompt_length, eos, tokenizer, avoid)
        self.greedy = not sampling.temperature or sampling.temperature <= 0
        self.rng = None
        self.last_probability = 1.0  # the model's own probability of the last chosen token
        if not self.greedy:
            self.rng = torch.Generator()
            if sampling.seed is not None:  # 0 included: OpenAI clients send seed 0 meaning that seed
                self.rng.manual_seed(int(sampling.seed))
            else:
                self.rng.seed()
        self.top_logprobs = sampling.logprobs  # None: the request did not ask for logprobs
        self.scored: TokenLogprob | None = None  # the last chosen token's logprob, when asked

    def choose(self, ids, logits) -> int:
        """The next token after `ids` (1-D, prompt and reply so far) given the last position's logits [1, vocab]."""
        import torch

        scores = self.processors(ids.unsqueeze(0), logits) if self.processors else logits
        if self.greedy:
            token = int(torch.argmax(scores, dim=-1)[0])
        else:
            token = int(torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=self.rng)[0, 0])
        # The model's own distribution (before penalties, temperature and truncation, like vLLM's logprobs),
        # computed once for the guard and, when asked, the request's logprobs.
        logprobs = torch.log_softmax(logits[0].float(), dim=-1)
        self.last_probability = float(logprobs[token].exp())
        if self.top_logprobs is not None:
            self.scored = self._logprobs(logprobs, token)
        return token

    def _logprobs(self, logprobs, token: int) -> TokenLogprob:
        """The chosen token's log-probability and the top alternatives, from the model's log-softmax."""
        import torch

        top = []
        if self.top_logprobs:
            values, indices = torch.topk(logprobs, int(self.top_logprobs))
            top = list(zip(indices.tolist(), values.tolist()))
        return TokenLogprob(token, float(logprobs[token]), top)

"""llama.cpp's own sampler chain for a reply whose settings it covers, so no logits reach Python per token.

The chain repeats runtime.generation.sampling's order: logit_bias, the end-of-sequence ban until
min_new_tokens, the repetition penalty over the last `repeat_last_n` ids (the prompt's tail is fed in
first, as the Python window sees it), OpenAI frequency/presence penalties over the reply's own tokens
(a second penalties sampler that sees only those), then greedy, or top_k, top_p, min_p, temperature and
a seeded draw. Greedy picks the same token as the Python path (same float32 arithmetic, first index on
ties); a seeded draw is reproducible but uses llama.cpp's RNG, not torch's. Requests asking for logprobs,
a response_format or DRY keep the Python sampler (`python_only` says why).
"""

from __future__ import annotations

import ctypes
import math

DEFAULT_SEED = 0xFFFFFFFF  # llama.cpp's "pick a random seed"


def python_only(sampling) -> str | None:
    """Why a request needs the runtime's Python sampler; None when llama.cpp's chain samples it the same way."""
    from runtime.generation.structured import schema_of

    if sampling.logprobs is not None:
        return "logprobs"
    if schema_of(sampling.response_format) is not None:
        return "response_format"
    if sampling.dry_multiplier and sampling.dry_multiplier > 0:
        return "dry"
    return None


def chain_seed(seed: int | None) -> int:
    """A uint32 seed for llama.cpp's draw; never its "random" value, so every given seed stays reproducible."""
    return DEFAULT_SEED if seed is None else int(seed) % DEFAULT_SEED


class ChainSampler:
    """One reply's llama_sampler chain (freed with `close`); `choose` samples an output of the last decode."""

    def __init__(self, lib, n_vocab: int, sampling, prompt: list[int], eos: set[int]):
        self.lib = lib
        params = lib.llama_sampler_chain_default_params()
        params.no_perf = True
        self.chain = lib.llama_sampler_chain_init(params)
        self.greedy = not sampling.temperature or sampling.temperature <= 0
        self.min_new, self.generated, self.ban = int(sampling.min_new_tokens or 0), 0, None
        self.last_probability = 1.0  # the model's own probability of the last token (set when `want_probability`)
        self.want_probability = False
        self.scored = None  # no logprobs on this path (python_only sends those requests to the Python sampler)
        bias = {int(t): float(b) for t, b in (sampling.logit_bias or {}).items() if 0 <= int(t) < n_vocab}
        if bias:
            self._add(lib.llama_sampler_init_logit_bias(n_vocab, len(bias), _biases(lib, bias)))
        if self.min_new and eos:
            self.ban = self._add(lib.llama_sampler_init_logit_bias(
                n_vocab, len(eos), _biases(lib, {int(t): -math.inf for t in eos})))
        penalty, last_n = float(sampling.repetition_penalty or 1.0), int(sampling.repeat_last_n or 0)
        if penalty != 1.0 and last_n:
            window = last_n if last_n > 0 else len(prompt) + int(sampling.max_new_tokens) + 1
            index = self._add(lib.llama_sampler_init_penalties(n_vocab, window, penalty, 0.0, 0.0))
            repeat = lib.llama_sampler_chain_get(self.chain, index)
            for token in prompt[-window:]:  # the Python window looks back into the prompt too
                lib.llama_sampler_accept(repeat, token)
        if sampling.frequency_penalty or sampling.presence_penalty:  # the reply's own tokens only, all of them
            self._add(lib.llama_sampler_init_penalties(n_vocab, int(sampling.max_new_tokens) + 1, 1.0,
                                                       float(sampling.frequency_penalty or 0.0),
                                                       float(sampling.presence_penalty or 0.0)))
        if self.greedy:
            self._add(lib.llama_sampler_init_greedy())
            return
        if sampling.top_k and sampling.top_k > 0:
            self._add(lib.llama_sampler_init_top_k(int(sampling.top_k)))
        if sampling.top_p is not None and 0 < sampling.top_p < 1:
            self._add(lib.llama_sampler_init_top_p(float(sampling.top_p), 1))
        if sampling.min_p and 0 < sampling.min_p < 1:
            self._add(lib.llama_sampler_init_min_p(float(sampling.min_p), 1))
        if sampling.temperature != 1.0:
            self._add(lib.llama_sampler_init_temp(float(sampling.temperature)))
        self._add(lib.llama_sampler_init_dist(chain_seed(sampling.seed)))

    def _add(self, sampler) -> int:
        if not sampler:
            raise MemoryError("llama.cpp could not make a sampler")
        self.lib.llama_sampler_chain_add(self.chain, sampler)
        return self.lib.llama_sampler_chain_n(self.chain) - 1

    def choose(self, ctx, index: int, n_vocab: int) -> int:
        """The next token from output `index` of the context's last decode (accepted into the penalties' windows)."""
        if self.ban is not None and self.generated >= self.min_new:  # end-of-sequence is allowed from now on
            self.lib.llama_sampler_free(self.lib.llama_sampler_chain_remove(self.chain, self.ban))
            self.ban = None
        token = self.lib.llama_sampler_sample(self.chain, ctx, index)
        self.generated += 1
        if self.want_probability:
            self.last_probability = probability(self.lib, ctx, index, n_vocab, token)
        return token

    def close(self) -> None:
        if self.chain:
            self.lib.llama_sampler_free(self.chain)
            self.chain = None


def _biases(lib, bias: dict[int, float]):
    array = (lib.llama_logit_bias * len(bias))()
    for entry, (token, value) in zip(array, sorted(bias.items())):
        entry.token, entry.bias = token, value
    return array


def probability(lib, ctx, index: int, n_vocab: int, token: int) -> float:
    """softmax(logits)[token] at temperature 1 (the guard's signal), from llama.cpp's buffer without a copy."""
    import numpy as np

    pointer = lib.llama_get_logits_ith(ctx, index)
    logits = np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,))
    top = logits.max()
    return float(math.exp(float(logits[token]) - top) / np.exp(logits - top).sum(dtype=np.float64))

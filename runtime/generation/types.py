"""The generator's public types: requests, their sampling settings, reply streams, the busy error.

Every backend speaks these; the local one (continuous batching, batched multi-LoRA) is
runtime.generation.batching.BatchingGenerator.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field, fields

from runtime.errors import Busy

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in mixed batches


class GeneratorBusy(Busy):
    """The request queue is full; retry after `retry_after` seconds."""

    def __init__(self, retry_after: float):
        seconds = max(1, round(retry_after))
        super().__init__(f"the model is busy ({seconds} s until a slot frees up); please retry then", seconds)


# What the config sets for every reply (a card's extensions.personae.generation and a request may override).
SETTINGS_FROM_CONFIG = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "repeat_last_n",
                        "frequency_penalty", "presence_penalty", "dry_multiplier", "max_new_tokens", "seed")


@dataclass
class SamplingSettings:
    """How one reply is sampled."""

    temperature: float = 0.7
    top_p: float = 1.0  # 1 = off
    top_k: int = 40  # 0 = off
    min_p: float = 0.1  # drop tokens under this share of the likeliest one's probability; 0 = off
    repetition_penalty: float = 1.1
    repeat_last_n: int = 64  # the repetition penalty looks back this many tokens (-1: the whole prompt too)
    frequency_penalty: float = 0.0  # OpenAI semantics, over the reply's own tokens
    presence_penalty: float = 0.0
    dry_multiplier: float = 0.0  # DRY sequence-repetition penalty (llama.cpp's knobs); 0 = off
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_last_n: int = -1  # -1: the whole prompt too, so saying an earlier reply again is penalised
    max_new_tokens: int = 160
    stop: list[str] = field(default_factory=list)
    seed: int | None = None  # None (or a negative config value): random each reply; 0 is a seed like any other
    min_new_tokens: int = 0  # end-of-sequence is suppressed before this many tokens (benchmarks, fixed lengths)
    guard: bool = True  # stop a sampled reply that degenerates (loops, word lists, gibberish) and mark it
    resample: bool = True  # ... but first re-sample it once, if no consumer has taken any of its text yet
    logprobs: int | None = None  # record each token's logprob and this many alternatives; None = don't
    logit_bias: dict[int, float] | None = None  # OpenAI's: token id -> bias in [-100, 100] added to its logit
    response_format: dict | None = None  # OpenAI's: {"type": "json_object"} / json_schema constrain the reply

    @classmethod
    def from_sources(cls, settings, character=None, **overrides) -> "SamplingSettings":
        """Config defaults < the character's card < per-request overrides (None = not given)."""
        values = {name: getattr(settings, name) for name in SETTINGS_FROM_CONFIG}
        values["stop"] = []
        if character is not None:
            values.update({k: v for k, v in character.generation_settings().items() if k in values})
        known = {f.name for f in fields(cls)}
        values.update({k: v for k, v in overrides.items() if v is not None and k in known})
        if isinstance(values["stop"], str):
            values["stop"] = [values["stop"]]
        if values["seed"] is not None and int(values["seed"]) < 0:
            values["seed"] = None  # the config's -1: random each reply
        return cls(**values)


@dataclass
class TokenLogprob:
    """One generated token's log-probability and the likeliest alternatives, as (token id, logprob)."""

    token: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Request:
    """One reply to generate."""

    input_ids: list[int]
    sampling: SamplingSettings
    adapter: str = BASE_ADAPTER  # adapter name in the model, or the bare base
    submitted: float = field(default_factory=time.perf_counter)
    earlier: list[str] = field(default_factory=list)  # the character's earlier replies: the guard's copy check
    avoid: list[list[int]] = field(default_factory=list)  # token runs this attempt may not complete (a retry after a copy)
    names: list[str] = field(default_factory=list)  # the character's and user's names: never banned by `avoid`


class ReplyStream:
    """Text pieces of one reply as they are made; iterate it, or cancel it."""

    _DONE = object()

    def __init__(self, request: Request):
        self.request = request
        self._pieces: queue.Queue = queue.Queue()
        self.cancelled = threading.Event()
        self.text = ""
        self.completion_tokens = 0
        self.logprobs: list[TokenLogprob] = []  # one per generated token (not end-of-sequence), when asked
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self.finish_reason: str | None = None  # stop, length, degenerate, cancelled, error
        self.degenerate: str | None = None  # why the guard stopped it (finish_reason "degenerate")
        self.resampled: str | None = None  # why the guard threw away a first attempt nobody had seen
        self.shown = False  # a consumer took a piece: from now on the text can't be taken back
        self._lock = threading.Lock()
        self._attempt = 0  # pieces of a retracted attempt are skipped by the consumer
        self.error: BaseException | None = None
        self.served_by: dict = {}  # which backend / endpoint produced it, when a backend says (logged in meta)

    # --- producer side (the worker) ---
    def push(self, piece: str) -> None:
        """Hand a new piece of text to the caller."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.text += piece
        self._pieces.put((self._attempt, piece))

    def retract(self) -> bool:
        """Take back everything pushed so far (to re-sample it); False if a consumer already took some of it."""
        with self._lock:
            if self.shown:
                return False
            self._attempt += 1
            self.text, self.logprobs, self.completion_tokens, self.first_token_at = "", [], 0, None
            return True

    def finish(self, reason: str, error: BaseException | None = None) -> None:
        """Mark the reply complete (reason: stop, length, cancelled, error)."""
        self.finish_reason = reason
        self.error = error
        self.finished_at = time.perf_counter()
        self._pieces.put(self._DONE)

    # --- consumer side ---
    def cancel(self) -> None:
        """Stop generating this reply (the caller went away)."""
        self.cancelled.set()

    def __iter__(self):
        """The pieces as they come; taking one counts as showing it (it can no longer be re-sampled)."""
        return self._take(show=True)

    def _take(self, show: bool):
        while True:
            item = self._pieces.get()
            if item is self._DONE:
                if self.error is not None:
                    raise self.error
                return
            attempt, piece = item
            with self._lock:
                if attempt != self._attempt:  # from an attempt the guard threw away
                    continue
                self.shown = self.shown or show
            yield piece

    def result(self) -> str:
        """Wait for the whole reply and return its text (nothing is shown meanwhile, so it may be re-sampled)."""
        for _ in self._take(show=False):
            pass
        return self.text

    @property
    def ttft(self) -> float | None:
        """Seconds from submission to the first piece."""
        return None if self.first_token_at is None else self.first_token_at - self.request.submitted


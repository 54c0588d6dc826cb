"""The worker's bookkeeping: one reply being decoded (a row) and the live rows of one model (a batch)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from runtime.generation.avoid import retry_ban
from runtime.generation.detok import Detokenizer, StopText
from runtime.generation.guard import DegenerationMonitor
from runtime.generation.kv_cache import full_attention_only
from runtime.generation.sampling import RowSampler
from runtime.generation.types import ReplyStream


@dataclass
class Row:
    """One reply being decoded."""

    stream: ReplyStream
    model_key: str | None  # None = the base model
    adapter: str  # LoRA adapter name on the base, or BASE_ADAPTER
    ids: object = None  # LongTensor buffer: prompt + generated tokens
    length: int = 0
    prompt_length: int = 0
    sampler: RowSampler | None = None
    guard: DegenerationMonitor | None = None  # sampled replies only: greedy ones are deterministic
    detok: Detokenizer | None = None
    stop: StopText | None = None
    done: bool = False

    @property
    def generated(self) -> int:
        return self.length - self.prompt_length


@dataclass
class Batch:
    """The live rows of one model with their stacked KV cache and padding mask."""

    model: object
    lora: object = None  # LoraBatch (base model only)
    rows: list = field(default_factory=list)
    cache: object = None
    mask: object = None  # LongTensor [rows, cache length]: 0 = left padding
    full_attention: bool = False  # every layer keeps all positions: growing KV cache, reusable prefixes

    @classmethod
    def of(cls, model) -> "Batch":
        return cls(model, full_attention=full_attention_only(model))


def ready_to_resample(row: Row, verdict, tokenizer=None) -> bool:
    """Ready a reply the guard stopped for its one re-sample (same prompt, new seed); False if it can't have one.

    It can't when re-sampling is off, when this is already the second attempt, or when a consumer has
    taken some of its text (it was shown: it is cut and marked instead). After a copy or a loop, the retry
    may not go on with the copied reply's runs or the loop's repeated runs (runtime.generation.avoid).
    """
    stream = row.stream
    sampling = stream.request.sampling
    if not sampling.resample or stream.resampled or not stream.retract():
        return False
    stream.resampled = verdict.reason
    seed = None if sampling.seed is None else (sampling.seed * 1_000_003 + 1) % 2**63  # seeded stays reproducible
    stream.request = replace(stream.request, sampling=replace(sampling, seed=seed),
                             avoid=retry_ban(row, verdict, tokenizer))
    return True

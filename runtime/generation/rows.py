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


RETRY_COOLING = 0.6  # after gibberish the retry's temperature is this share of the first attempt's ...
RETRY_MIN_P = 0.2  # ... and its min_p at least this: invented words are improbable tokens strung together


def retry_sampling(sampling, verdict):
    """The retry's sampling: a new seed; after gibberish also a cooler, narrower draw.

    Invented words ("SQUELK", "GETHINDLESS") come from the tail of the distribution; a retry drawn from the same
    tail invents again (coherence bench, Pixel: the one reply marked degenerate was a retry that invented two
    words). Loops and copies are the likeliest tokens said again, so their retries keep the card's temperature:
    cooling them would make the repeat likelier, and the n-gram ban handles them (runtime.generation.avoid).
    """
    seed = None if sampling.seed is None else (sampling.seed * 1_000_003 + 1) % 2**63  # seeded stays reproducible
    if not verdict.reason.startswith("gibberish"):
        return replace(sampling, seed=seed)
    return replace(sampling, seed=seed, temperature=sampling.temperature * RETRY_COOLING,
                   min_p=max(sampling.min_p, RETRY_MIN_P))


def ready_to_resample(row: Row, verdict, tokenizer=None) -> bool:
    """Ready a reply the guard stopped for its one re-sample (same prompt, new seed); False if it can't have one.

    It can't when re-sampling is off, when this is already the second attempt, or when a consumer has
    taken some of its text (it was shown: it is cut and marked instead). After a copy or a loop, the retry
    may not go on with the copied reply's runs or the loop's repeated runs (runtime.generation.avoid); after
    gibberish it is drawn cooler (`retry_sampling`).
    """
    stream = row.stream
    sampling = stream.request.sampling
    if not sampling.resample or stream.resampled or not stream.retract():
        return False
    stream.resampled = verdict.reason
    stream.request = replace(stream.request, sampling=retry_sampling(sampling, verdict),
                             avoid=retry_ban(row, verdict, tokenizer))
    return True

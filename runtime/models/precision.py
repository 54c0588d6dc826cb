"""Deployment precision: fp32, bf16 or int8 (dynamic quantisation) on CPU, and what `auto` picks.

On CPUs with bf16 matrix units, bf16 loses at batch 1 (conversion overhead, memory-bound) and wins
at large batches; where the crossover lies depends on the CPU, so `auto` measures it once with a
short matmul probe shaped like the model's projections (cached per CPU / torch / thread count) and
chooses bf16 only when the expected batch (setting `expected_batch`) reaches it. int8 is never
chosen automatically: it changes outputs more (see the generation benchmark) and is opt-in.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("personae.precision")

DTYPES = ("auto", "float32", "bfloat16", "float16", "int8")
PROBE_BATCHES = (1, 2, 4, 8, 16, 32)
WIN = 1.1  # bf16 must be this much faster to be worth its rounding
INT8_KEEP_FP32 = ("down_proj",)  # Linear layers int8 leaves alone (see convert)

last_choice: "Choice | None" = None  # what the running process chose, for status lines


@dataclass
class Choice:
    """The precision in use and why."""

    dtype: str
    reason: str


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _probe_key(threads: int) -> str:
    import os
    from importlib.metadata import version

    # torch's default thread count is the number of cores; no torch import needed to know it.
    text = f"{_cpu_name()}|{version('torch')}|{threads or os.cpu_count()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def probe_bf16(threads: int = 0, hidden: int = 576, inner: int = 1536) -> dict[int, float]:
    """bf16 speed relative to fp32 for a projection-shaped matmul at each batch size (>1 = bf16 faster)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    weight32 = torch.randn(inner, hidden)
    weight16 = weight32.to(torch.bfloat16)
    ratios = {}
    with torch.inference_mode():
        for batch in PROBE_BATCHES:
            x32 = torch.randn(batch, hidden)
            x16 = x32.to(torch.bfloat16)
            timings = {"fp32": float("inf"), "bf16": float("inf")}
            for _ in range(7):  # interleaved, best of 7: robust to other processes on the machine
                for name, x, w in (("fp32", x32, weight32), ("bf16", x16, weight16)):
                    started = time.perf_counter()
                    for _ in range(10):
                        torch.nn.functional.linear(x, w)
                    timings[name] = min(timings[name], time.perf_counter() - started)
            ratios[batch] = round(timings["fp32"] / timings["bf16"], 3)
    return ratios


def crossover(cache_dir=None, threads: int = 0, measure: bool = True) -> int | None:
    """The smallest batch at which bf16 beats fp32 here (cached), None if never; -1 if not measured yet."""
    path = Path(cache_dir).expanduser() / "precision-probe.json" if cache_dir else None
    key = _probe_key(threads)
    cached = {}
    if path and path.is_file():
        try:
            cached = json.loads(path.read_text())
        except ValueError:
            cached = {}
    if key in cached:
        return cached[key]["crossover"]
    if not measure:
        return -1
    ratios = probe_bf16(threads)
    # The crossover is where bf16 wins from there on up (one lucky probe size is not a crossover).
    batches = sorted(ratios)
    point = next((b for i, b in enumerate(batches) if all(ratios[c] >= WIN for c in batches[i:])), None)
    if path:
        cached[key] = {"crossover": point, "ratios": ratios, "cpu": _cpu_name()}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(cached, indent=2))
        except OSError:
            pass  # a read-only cache only costs a re-measure next start
    return point


def choose_precision(requested: str, device: str = "cpu", expected_batch: int = 1, cache_dir=None,
                     threads: int = 0, measure: bool = True) -> Choice:
    """Resolve the dtype setting; `auto` picks by device and expected batch against the measured crossover."""
    if requested not in DTYPES:
        raise ValueError(f"dtype {requested!r} is not one of {', '.join(DTYPES)}")
    if requested != "auto":
        return Choice(requested, "set explicitly")
    if not str(device).startswith("cpu"):
        return Choice("bfloat16", f"auto: bf16 on {device}")
    point = crossover(cache_dir, threads, measure)
    if point == -1:
        return Choice("float32", "auto: fp32 until the bf16 probe runs at the first model load")
    if point is None:
        return Choice("float32", "auto: fp32 (bf16 is not faster on this CPU at any batch size)")
    if expected_batch >= point:
        return Choice("bfloat16", f"auto: bf16 (expected batch {expected_batch} >= {point}, where bf16 starts to "
                                  "win on this CPU)")
    return Choice("float32", f"auto: fp32 (expected batch {expected_batch} < {point}, where bf16 starts to win "
                             "on this CPU)")


def _choose_for(settings, measure: bool) -> Choice:
    return choose_precision(settings.dtype, settings.device, int(getattr(settings, "expected_batch", 1) or 1),
                            settings.cache_dir, settings.threads, measure)


def resolve_dtype(settings, measure: bool = True) -> str:
    """The dtype to load the base model in for these settings; logs and remembers the choice."""
    global last_choice
    choice = _choose_for(settings, measure)
    if measure:
        last_choice = choice
        log.info("precision: %s — %s", choice.dtype, choice.reason)
    return choice.dtype


def describe(settings) -> str:
    """One line for `personae config` / status: the dtype in use (or that would be) and why."""
    choice = last_choice or _choose_for(settings, measure=False)
    return f"precision: {choice.dtype} ({choice.reason})"


def convert(model, dtype: str):
    """The same model in another precision (a new object for int8; bf16 converts in place)."""
    import torch

    if dtype in ("bfloat16", "float16"):
        return model.to(getattr(torch, dtype))
    if dtype == "int8":
        # Per-channel int8 everywhere except the output projection (tied to the embeddings in small
        # models) and the MLP down-projections, whose inputs carry the activation outliers that
        # dynamic (per-tensor) activation quantisation can't hold: on SmolLM2 that took perplexity
        # on the cards' dialogues from 216 (every Linear int8) to 73 (fp32: 62.8).
        output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        names = {name for name, module in model.named_modules()
                 if type(module) is torch.nn.Linear and module is not output and not name.endswith(INT8_KEEP_FP32)}
        spec = {name: torch.ao.quantization.per_channel_dynamic_qconfig for name in names}
        return torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8)
    return model.to(torch.float32)


def perplexity(model, tokenizer, conversations: list[list[dict]]) -> float:
    """Perplexity of the assistant turns of chat conversations (the cards' example dialogues)."""
    import math

    import torch

    total, count = 0.0, 0
    with torch.inference_mode():
        for messages in conversations:
            ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
            labels = list(ids)
            # Score only the assistant's replies: mask everything up to the last assistant turn.
            prefix = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True,
                                                   return_dict=False)
            labels[: len(prefix)] = [-100] * len(prefix)
            tensor = torch.tensor([ids])
            loss = model(input_ids=tensor, labels=torch.tensor([labels])).loss
            scored = sum(1 for label in labels[1:] if label != -100)
            total += float(loss) * scored
            count += scored
    return math.exp(total / max(1, count))

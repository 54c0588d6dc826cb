"""The showdown: train each method on the same curated data, audit each, measure the trade-off."""

from __future__ import annotations

import json
import time
from pathlib import Path

from runtime.audit.probes import probe_set
from runtime.audit.report import audit_folder
from runtime.audit.runner import run_audit
from runtime.errors import PersonaeError
from runtime.plots import pyplot, save
from runtime.training import curate, preference_data, train_isolated
from runtime.training.config import PREFERENCE_METHODS, WEIGHT_METHODS, TrainingConfig
from runtime.training.runs import get_run
from runtime.training.speed import serving_speed

# "lora+dpo": supervised LoRA, then a DPO stage; "kto" / "dpo" alone: a LoRA trained on preferences only.
METHODS = ("prompt", "lora", "hybrid", "full", "lora+dpo", "lora+kto", "hybrid+dpo", "full+dpo", "kto", "dpo")
DEFAULT = ("prompt", "lora", "hybrid", "full", "lora+dpo")
COLUMNS = ("method", "aligned", "minor", "leakage", "train_seconds", "peak_memory_mb", "bytes_on_disk",
           "tokens_per_s", "ttft_ms")


class UnknownMethod(PersonaeError, ValueError):
    """A method name `personae compare` does not know."""


def parse_methods(text: str) -> list[str]:
    """'prompt,lora+dpo' -> ['prompt', 'lora+dpo'], refusing unknown methods."""
    methods = [m.strip().lower() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise UnknownMethod(f"unknown method(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(METHODS)}")
    return list(dict.fromkeys(methods))


def method_config(method: str, base: dict | None = None) -> TrainingConfig:
    """The TrainingConfig of a showdown column ('lora+dpo' = method lora with a DPO stage)."""
    weights, _, stage = method.partition("+")
    assert weights in WEIGHT_METHODS + PREFERENCE_METHODS, weights
    return TrainingConfig.from_sources(base or {}, method=weights, preference=stage or "")


class _Progress:
    """One status line per phase, with the training step read from the run's row in the log."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total, self.started = enabled, total, time.perf_counter()
        self.console = None
        if enabled:
            from rich.console import Console

            self.console = Console(stderr=True)

    def say(self, index: int, method: str, text: str) -> None:
        if self.console:
            elapsed = time.perf_counter() - self.started
            self.console.print(f"[bold][{index}/{self.total}][/] {method}: {text}  ({elapsed / 60:.1f} min)")

    def poller(self, engine, index: int, method: str):
        shown = {"step": None, "at": 0.0}

        def poll(run_id: str) -> None:
            if not self.console or time.monotonic() - shown["at"] < 15:
                return
            row = get_run(engine.store, run_id) or {}
            if row.get("step") != shown["step"]:
                shown.update(step=row.get("step"), at=time.monotonic())
                self.say(index, method, f"training step {row.get('step') or 0}/{row.get('max_steps') or '?'}")

        return poll


def showdown(engine, character_id: str, methods=DEFAULT, probes=None, progress: bool = True,
             train_config: dict | TrainingConfig | None = None, examples=None, preference=None, speed_requests: int = 8) -> dict:
    """Train every method, each in its own process, audit each on the same probes, time serving the same way."""
    character = engine.catalog.get(character_id)
    trained = [m for m in methods if m != "prompt"]
    probes = list(probes) if probes is not None else probe_set(character)
    if isinstance(train_config, TrainingConfig):  # every knob but the method, which each column sets
        train_config = {k: v for k, v in train_config.to_dict().items() if k not in ("method", "preference")}
    table = dict(engine.settings.training or {}, **(train_config or {}))
    if trained and examples is None:
        # One curated dataset for every method, so the comparison is fair.
        examples = curate(engine.store, character, engine.settings, pm=engine.pm,
                          config=TrainingConfig.from_sources(table))
    if preference is None and any(method_config(m, table).preference_kind for m in trained):
        preference = preference_data(engine.store, character, TrainingConfig.from_sources(table))
    shown = _Progress(progress, len(methods))
    rows = []
    for index, method in enumerate(methods, 1):
        metrics, version = {}, "base"
        if method != "prompt":
            shown.say(index, method, "training in its own process")
            result = train_isolated(engine, character.id, method_config(method, table), examples,
                                    preference=preference, on_poll=shown.poller(engine, index, method))
            metrics = dict(result.metrics or {})
            version = result.version.number
        shown.say(index, method, "measuring serving speed")
        speed = serving_speed(engine, character, version, requests=speed_requests)
        shown.say(index, method, f"auditing on {len(probes)} probes")
        report = run_audit(engine, character.id, version, probes=probes, progress=progress)
        rows.append({
            "method": method, "version": report.version, "run_id": report.run_id,
            "aligned": report.aligned, "minor": report.minor, "misaligned": report.misaligned,
            "leakage": report.leakage, "train_seconds": metrics.get("seconds"),
            # The child process's own peak (each method trains in a fresh process); None for prompt-only.
            "peak_memory_mb": metrics.get("peak_memory_mb"), "bytes_on_disk": metrics.get("bytes_on_disk"),
            "tokens_per_s": speed["tokens_per_s"], "ttft_ms": round(1000 * speed["ttft_s"], 1) if speed["ttft_s"] else None,
            "audit_tokens_per_s": report.tokens_per_s, "val_loss": metrics.get("val_loss"),
            "train_examples": metrics.get("train_examples"), "preference": metrics.get("preference"),
            "train_pid": metrics.get("pid"), "prompt_tokens": speed["prompt_tokens"],
        })
        shown.say(index, method, f"aligned {100 * (report.aligned or 0):.0f}%, leakage {100 * (report.leakage or 0):.0f}%")
    folder = audit_folder(engine.settings, character.id, f"compare-{int(time.time())}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "showdown.json").write_text(json.dumps(rows, indent=2, default=str))
    plot = plot_showdown(rows, folder / "showdown.png", character.id)
    return {"rows": rows, "plot": plot, "folder": folder}


def plot_showdown(rows: list[dict], path: Path, character: str) -> Path:
    """Aligned / minor / leakage per method beside training time, peak training memory and serving speed."""
    fig, (left, middle, right) = pyplot().subplots(1, 3, figsize=(13, 3.6))
    names = [r["method"] for r in rows]
    width = 0.25
    for i, key in enumerate(("aligned", "minor", "leakage")):
        left.bar([x + (i - 1) * width for x in range(len(rows))], [100 * (r[key] or 0) for r in rows], width, label=key)
    left.set_xticks(range(len(rows)), names, rotation=20)
    left.set_ylim(0, 100)
    left.set_ylabel("% of replies")
    left.legend(fontsize=8)
    left.set_title(f"Persona audit of {character}")
    middle.bar(names, [r["train_seconds"] or 0 for r in rows], color="#777", label="training s")
    twin = middle.twinx()
    twin.plot(names, [r["peak_memory_mb"] or 0 for r in rows], "o", color="tab:red", label="peak MB")
    middle.set_ylabel("training seconds")
    twin.set_ylabel("training peak memory (MB)", color="tab:red")
    middle.set_title("Training cost (own process each)")
    middle.tick_params(axis="x", rotation=20)
    right.bar(names, [r["tokens_per_s"] or 0 for r in rows], color="tab:green")
    right.set_ylabel("tokens/s (8 concurrent replies)")
    right.set_title("Serving speed, same generator path")
    right.tick_params(axis="x", rotation=20)
    return save(fig, path)

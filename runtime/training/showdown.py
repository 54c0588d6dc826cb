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
from runtime.training import curate, train

METHODS = ("prompt", "lora", "hybrid", "full")
COLUMNS = ("method", "aligned", "minor", "leakage", "train_seconds", "peak_memory_mb", "bytes_on_disk", "tokens_per_s")


class UnknownMethod(PersonaeError, ValueError):
    """A method name `personae compare` does not know."""


def parse_methods(text: str) -> list[str]:
    """'prompt,lora' -> ['prompt', 'lora'], refusing unknown methods."""
    methods = [m.strip().lower() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise UnknownMethod(f"unknown method(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(METHODS)}")
    return list(dict.fromkeys(methods))


def showdown(engine, character_id: str, methods=METHODS, probes=None, progress: bool = True,
             train_config=None, examples=None) -> dict:
    """Train every method (prompt = the card alone, on the base) and audit each on the same probes."""
    character = engine.catalog.get(character_id)
    trained = [m for m in methods if m != "prompt"]
    probes = list(probes) if probes is not None else probe_set(character)
    if trained and examples is None:
        # One curated dataset for every method, so the comparison is fair.
        examples = curate(engine.store, character, engine.settings, pm=engine.pm)
    rows = []
    for method in methods:
        metrics, version = {}, "base"
        if method != "prompt":
            clock = time.perf_counter()
            result = train(engine, character.id, method, config=train_config, examples=examples,
                                    progress=progress)
            metrics = dict(result.metrics or {})
            metrics.setdefault("seconds", time.perf_counter() - clock)
            version = str(result.version.number) if result.version is not None else "base"
        report = run_audit(engine, character.id, version, probes=probes, progress=progress)
        rows.append({
            "method": method, "version": report.version, "run_id": report.run_id,
            "aligned": report.aligned, "minor": report.minor, "misaligned": report.misaligned,
            "leakage": report.leakage, "train_seconds": metrics.get("seconds"),
            "peak_memory_mb": metrics.get("peak_memory_mb"), "bytes_on_disk": metrics.get("bytes_on_disk"),
            "tokens_per_s": report.tokens_per_s,
        })
    folder = audit_folder(engine.settings, character.id, f"compare-{int(time.time())}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "showdown.json").write_text(json.dumps(rows, indent=2))
    plot = plot_showdown(rows, folder / "showdown.png", character.id)
    return {"rows": rows, "plot": plot, "folder": folder}


def plot_showdown(rows: list[dict], path: Path, character: str) -> Path:
    """Aligned / minor / leakage per method beside training time."""
    fig, (left, right) = pyplot().subplots(1, 2, figsize=(9, 3.4))
    names = [r["method"] for r in rows]
    width = 0.25
    for i, key in enumerate(("aligned", "minor", "leakage")):
        left.bar([x + (i - 1) * width for x in range(len(rows))], [100 * (r[key] or 0) for r in rows], width, label=key)
    left.set_xticks(range(len(rows)), names)
    left.set_ylim(0, 100)
    left.set_ylabel("% of replies")
    left.legend(fontsize=8)
    left.set_title(f"Persona audit of {character} by method")
    right.bar(names, [r["train_seconds"] or 0 for r in rows], color="#777")
    right.set_ylabel("training seconds")
    right.set_title("Training time")
    return save(fig, path)

"""Audit benchmarks: a 50-probe audit of one character on real SmolLM2, and scoring throughput."""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench_utils import report

LABELS = Path(__file__).resolve().parent.parent / "fixtures" / "audit_labels"


def test_audit_benchmarks(real_base, make_engine):
    from runtime.audit import run_audit, score_replies
    from runtime.audit.embeddings import load_model
    from runtime.audit.probes import probe_set

    load_model()  # the embedding model loads once per process; not part of an audit's time
    engine = make_engine(real_base)
    character = engine.catalog.get("pixel")
    probes = probe_set(character)
    assert len(probes) == 50

    # Baseline in the same run: a one-probe audit (one reply, one base answer, scoring, report).
    started = time.perf_counter()
    single = run_audit(engine, "pixel", probes=probes[:1], progress=False)
    one_probe = time.perf_counter() - started
    print(f"\none-probe audit: {one_probe:.1f} s {single.phases}", flush=True)

    started = time.perf_counter()
    full = run_audit(engine, "pixel", probes=probes, progress=True)
    fifty = time.perf_counter() - started
    print(f"\n50-probe audit: {fifty:.1f} s {full.phases}", flush=True)

    rows = [json.loads(line) for path in sorted(LABELS.glob("*.jsonl")) for line in path.read_text().splitlines()]
    started = time.perf_counter()
    for character_id in {r["character"] for r in rows}:
        score_replies(engine.catalog.get(character_id), [r for r in rows if r["character"] == character_id])
    scoring = time.perf_counter() - started

    report("audit", [
        {"metric": "50-probe audit of pixel, seconds", "value": round(fifty, 1), "target": "minutes"},
        {"metric": "replies in the 50-probe audit", "value": len(full.verdicts)},
        {"metric": "one-probe audit (baseline), seconds", "value": round(one_probe, 1)},
        {"metric": "50-probe audit / one-probe audit", "value": round(fifty / one_probe, 1)},
        {"metric": "seconds per reply (50-probe audit)", "value": round(fifty / len(full.verdicts), 2)},
        {"metric": "serving tokens/s during the audit", "value": full.tokens_per_s},
        {"metric": "phases of the 50-probe audit, seconds", "value": full.phases},
        {"metric": "aligned / minor / misaligned / leakage %", "value": " / ".join(
            f"{100 * x:.0f}" for x in (full.aligned, full.minor, full.misaligned, full.leakage))},
        {"metric": "scoring only: replies/s (labelled set)", "value": round(len(rows) / scoring, 1)},
    ])
    assert single.verdicts and len(full.verdicts) >= 50


def test_scoring_speed_on_the_generalisation_set():
    """Replies scored per second (no generation) over the labelled sets (936 replies), each against the whole catalog.

    Baseline in the same run: only embedding the same replies with all-MiniLM-L6-v2 (the floor any
    embedding-based scorer pays), interleaved with scoring (A, B, A, B) so the ratio holds on a busy
    machine where replies/s does not.
    """
    import os

    from runtime.audit import score_replies
    from runtime.audit.embeddings import embed, load_model
    from runtime.characters import load_card

    folders = [LABELS.parent / "audit_generalisation", LABELS.parent / "audit_heldout3", LABELS.parent / "audit_heldout4"]
    cards = {p.stem: load_card(p) for folder in folders for p in sorted((folder / "cards").glob("*.json"))}
    builtins = [load_card(p) for p in sorted((LABELS.parents[2] / "plugins" / "characters" / "cards").glob("*.json"))]
    load_model()
    sets = {p.stem: [json.loads(line) for line in p.read_text().splitlines()]
            for folder in folders for p in sorted((folder / "replies").glob("*.jsonl"))}
    catalog = builtins + list(cards.values())
    score_replies(cards["kai"], sets["kai"][:2], others=catalog)  # reference caches warm
    replies = [row["reply"] for rows in sets.values() for row in rows]
    embedding, scoring, scored = [], [], 0
    for _ in range(2):
        started = time.perf_counter()
        embed(replies)
        embedding.append(time.perf_counter() - started)
        started = time.perf_counter()
        scored = sum(len(score_replies(cards[cid], rows, others=catalog)) for cid, rows in sets.items())
        scoring.append(time.perf_counter() - started)
    load = os.getloadavg()[0]
    report("audit-scoring", [
        {"metric": f"scoring only: replies/s ({scored} replies, {len(cards)} characters, {len(catalog)}-card catalog)",
         "value": round(scored / min(scoring), 1), "target": ">= 20"},
        {"metric": "baseline: embedding the same replies only, replies/s", "value": round(len(replies) / min(embedding), 1)},
        {"metric": "scoring time / embedding-only time (each the faster of two interleaved rounds)",
         "value": round(min(scoring) / min(embedding), 2)},
        {"metric": "load average (1 min) at the end", "value": round(load, 1)},
    ])
    assert scored == len(replies)

"""Persona in the weights: Pixel trained behind a short prompt vs prompt-only with the full card, on SmolLM2.

Ratios only (the machine is shared): prompt tokens, first-token time and decode speed of the short-prompt
character with its weights against the full card on the base, measured the same way (runtime.training.speed);
aligned / leakage of the full card (base, and with the weights Pixel ships), short+weights and short alone on the
same probes (none of them a training turn). Training data: Pixel's written dialogues (the ones its shipped weights
were made from), imported as `personae bootstrap --from` does. Saved to results/persona_weights.json.
PERSONAE_PERSONA_THREADS sets torch's threads for training (default 2), PERSONAE_PERSONA_STEPS caps its optimiser
steps (default: 3 epochs) and PERSONAE_PERSONA_LENGTH its tokens per example (default 384).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from bench_utils import report

from runtime.audit.probes import probe_set
from runtime.audit.runner import run_audit
from runtime.training import retrain
from runtime.training.config import TrainingConfig
from runtime.training.speed import serving_speed
from runtime.training.written import import_written

WRITTEN = Path(__file__).resolve().parents[2] / "plugins" / "characters" / "cards" / "dialogues" / "pixel.json"
THREADS = int(os.environ.get("PERSONAE_PERSONA_THREADS", "2"))  # read at import: tests clear PERSONAE_*
STEPS = int(os.environ.get("PERSONAE_PERSONA_STEPS", "-1"))
LENGTH = int(os.environ.get("PERSONAE_PERSONA_LENGTH", "384"))


@pytest.mark.real_model
def test_short_prompt_with_weights_against_the_full_card(make_engine, real_base):
    engine = make_engine(real_base, audit={"max_new_tokens": 60})
    pixel = engine.catalog.get("pixel")
    probes = [p for p in probe_set(pixel) if p.kind != "drift"][:16]
    full = run_audit(engine, "pixel", "base", probes=probes, progress=False, report=False)
    full_speed = serving_speed(engine, pixel, "base")
    shipped = run_audit(engine, "pixel", 1, probes=probes, progress=False, report=False)  # adopted as version 1
    # From here on the card says "short": curation, training and serving all use name and a line.
    pixel.extensions.setdefault("personae", {})["prompt_style"] = "short"
    imported = import_written(engine, "pixel", WRITTEN)  # probe questions cut, screened by the audit
    config = TrainingConfig(epochs=3, max_steps=STEPS, max_length=LENGTH, gate="loss", gate_tolerance=10.0,
                            threads=THREADS, batch_size=2, grad_accum=2)
    outcome = retrain(engine, "pixel", config=config, progress=True, in_subprocess=False)
    assert outcome.status == "promoted", outcome.reason
    version = outcome.version.number
    short = run_audit(engine, "pixel", version, probes=probes, progress=False, report=False)
    short_speed = serving_speed(engine, pixel, version)
    bare = run_audit(engine, "pixel", "base", probes=probes, progress=False, report=False)  # short prompt, no weights
    runs = (full, shipped, short, bare)
    rows = [
        {"metric": "written dialogues imported (replies)", "value": f"{imported.dialogues} ({imported.replies})"},
        {"metric": "prompt tokens: short+weights / full card", "value": round(short_speed["prompt_tokens"]
                                                                              / full_speed["prompt_tokens"], 3)},
        {"metric": "prompt tokens (full card, short)",
         "value": [full_speed["prompt_tokens"], short_speed["prompt_tokens"]]},
        {"metric": "first-token time: short+weights / full card", "value": round(short_speed["ttft_s"]
                                                                                / full_speed["ttft_s"], 3)},
        {"metric": "decode tokens/s: short+weights / full card", "value": round(short_speed["tokens_per_s"]
                                                                               / full_speed["tokens_per_s"], 3)},
        {"metric": "aligned: full card (base), full card + shipped weights, short+weights, short (base)",
         "value": [round(r.aligned, 3) for r in runs]},
        {"metric": "leakage: full card (base), full card + shipped weights, short+weights, short (base)",
         "value": [round(r.leakage, 3) for r in runs]},
        {"metric": "probes", "value": len(probes)},
        {"metric": "training: max steps, tokens per example, threads", "value": [STEPS, LENGTH, THREADS]},
    ]
    report("persona_weights", rows)
    assert short_speed["prompt_tokens"] < full_speed["prompt_tokens"]
    assert all(len(r.verdicts) == len(probes) for r in runs)

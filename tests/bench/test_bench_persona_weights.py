"""Persona in the weights: Pixel trained behind a short prompt vs prompt-only with the full card, on SmolLM2.

Ratios only (the machine is shared): prompt tokens, first-token time and decode speed of the short-prompt
character with its weights against the full card on the base, measured the same way (runtime.training.speed);
aligned / leakage of both on the same probes (none of them a training turn). Saved to results/persona_weights.json.
"""

from __future__ import annotations

import pytest
from bench_utils import report
from showdown_pixel import TURNS, check_no_probe_overlap

from runtime.audit.probes import probe_set
from runtime.audit.runner import run_audit
from runtime.training import retrain
from runtime.training.config import TrainingConfig
from runtime.training.speed import serving_speed


def _log_scripted(store, character: str = "pixel") -> None:
    for index, (question, answer) in enumerate(TURNS):
        store.ensure_user(f"player{index % 4}", "Player", "script")
        conversation = store.conversation_id("script", f"chat-{index // 5}", character)
        asked = store.log_message(conversation_id=conversation, role="user", text=question, character=character,
                                  platform="script", channel=f"chat-{index // 5}", user_id=f"player{index % 4}",
                                  user_name="Player")
        store.log_message(conversation_id=conversation, role="assistant", text=answer, character=character,
                          platform="script", channel=f"chat-{index // 5}", reply_to=asked["id"],
                          weights_version="scripted")


@pytest.mark.real_model
def test_short_prompt_with_weights_against_the_full_card(make_engine, real_base):
    engine = make_engine(real_base, audit={"max_new_tokens": 60})
    pixel = engine.catalog.get("pixel")
    check_no_probe_overlap(pixel)
    _log_scripted(engine.store)
    probes = probe_set(pixel, limit=8)
    full = run_audit(engine, "pixel", "base", probes=probes, progress=False, report=False)
    full_speed = serving_speed(engine, pixel, "base")
    # From here on the card says "short": curation, training and serving all use name and a line.
    pixel.extensions.setdefault("personae", {})["prompt_style"] = "short"
    outcome = retrain(engine, "pixel", config=TrainingConfig(epochs=3, max_length=384, gate="loss", gate_tolerance=10.0,
                                                             threads=1), progress=True, in_subprocess=False)
    assert outcome.status == "promoted", outcome.reason
    version = outcome.version.number
    short = run_audit(engine, "pixel", version, probes=probes, progress=False, report=False)
    short_speed = serving_speed(engine, pixel, version)
    bare = run_audit(engine, "pixel", "base", probes=probes, progress=False, report=False)  # short prompt, no weights
    rows = [
        {"metric": "prompt tokens: short+weights / full card", "value": round(short_speed["prompt_tokens"]
                                                                              / full_speed["prompt_tokens"], 3)},
        {"metric": "prompt tokens (full card, short)", "value": [full_speed["prompt_tokens"], short_speed["prompt_tokens"]]},
        {"metric": "first-token time: short+weights / full card", "value": round(short_speed["ttft_s"]
                                                                                / full_speed["ttft_s"], 3)},
        {"metric": "decode tokens/s: short+weights / full card", "value": round(short_speed["tokens_per_s"]
                                                                               / full_speed["tokens_per_s"], 3)},
        {"metric": "aligned: full card (base), short+weights, short (base)",
         "value": [round(r.aligned, 3) for r in (full, short, bare)]},
        {"metric": "leakage: full card (base), short+weights, short (base)",
         "value": [round(r.leakage, 3) for r in (full, short, bare)]},
    ]
    report("persona_weights", rows)
    assert short_speed["prompt_tokens"] < full_speed["prompt_tokens"]

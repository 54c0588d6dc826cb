"""Foundation benchmarks: start-up to first token, console tokens/s, `personae --help` time."""

from __future__ import annotations

import io
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_utils import report

# Both start-up scripts run in fresh processes, so each pays its imports and loads from disk.
RAW_STARTUP = """
import json, sys, time
t0 = time.perf_counter()
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, ids = sys.argv[1], json.loads(sys.argv[2])
tok = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
with torch.inference_mode():
    model.generate(torch.tensor([ids]), max_new_tokens=1, do_sample=False)
print(time.perf_counter() - t0)
"""

ENGINE_STARTUP = """
import sys, time
t0 = time.perf_counter()
from runtime.chat.build import build_engine
from runtime.chat.engine import Turn
engine = build_engine()
reply = engine.reply(Turn(platform="bench", channel="startup", user_id="b", text=sys.argv[1],
                          character=engine.catalog.get("pixel"), sampling={"temperature": 0, "max_new_tokens": 4}))
next(iter(reply))
print(time.perf_counter() - t0)
reply.cancel()
engine.close()
"""


def run_script(script: str, *args: str) -> float:
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def test_foundation_benchmarks(real_base, make_engine, isolated_environment):
    import torch

    from plugins.console import ConsoleChat
    from runtime.chat.engine import Turn

    engine = make_engine(real_base)
    character = engine.catalog.get("pixel")
    question = "Tell me about your favourite game, in detail."

    # --- start-up to first streamed token, fresh processes, alternating, median of 3 ---
    warm = engine.reply(Turn(platform="bench", channel="ids", user_id="b", text=question, character=engine.catalog.get("pixel"),
                             sampling={"temperature": 0, "max_new_tokens": 1}))
    warm.result()
    ids = warm.stream.request.input_ids
    engine_runs, raw_runs = [], []
    for _ in range(3):
        raw_runs.append(run_script(RAW_STARTUP, str(real_base.folder), json.dumps(ids)))
        engine_runs.append(run_script(ENGINE_STARTUP, question))
    startup_ratio = statistics.median(engine_runs) / statistics.median(raw_runs)

    # --- console reply tokens/s against raw generate on the same prompt (greedy, same tokens) ---
    max_new = 64
    sampling = {"temperature": 0, "max_new_tokens": max_new, "repetition_penalty": 1.0}
    console = ConsoleChat(engine, character, "Ann", "bench-console", sampling, out=io.StringIO())
    input_ids = torch.tensor([ids])
    raw_rates, console_rates = [], []
    for i in range(3):
        started = time.perf_counter()
        with torch.inference_mode():
            output = real_base.model.generate(input_ids, max_new_tokens=max_new, do_sample=False,
                                              pad_token_id=real_base.tokenizer.pad_token_id)
        raw_rates.append((output.shape[1] - input_ids.shape[1]) / (time.perf_counter() - started))
        engine.store.new_conversation("console", "bench-console", character.id)
        started = time.perf_counter()
        console.handle(question)
        logged = engine.store.recent(1)[0]
        console_rates.append(logged["completion_tokens"] / (time.perf_counter() - started))
    console_ratio = statistics.median(console_rates) / statistics.median(raw_rates)

    # --- `personae --help` wall time ---
    script = str(Path(sys.executable).with_name("personae"))
    help_times = []
    for _ in range(5):
        started = time.perf_counter()
        subprocess.run([script, "--help"], capture_output=True, check=True)
        help_times.append(time.perf_counter() - started)

    rows = [
        {"metric": "start-up to first token, engine (s)", "value": round(statistics.median(engine_runs), 2)},
        {"metric": "start-up to first token, raw from_pretrained+generate (s)",
         "value": round(statistics.median(raw_runs), 2)},
        {"metric": "start-up ratio engine/raw", "value": round(startup_ratio, 2), "target": "<= 1.2"},
        {"metric": "raw generate tokens/s", "value": round(statistics.median(raw_rates), 1)},
        {"metric": "console reply tokens/s", "value": round(statistics.median(console_rates), 1)},
        {"metric": "console/raw tokens/s ratio", "value": round(console_ratio, 2), "target": ">= 0.95"},
        {"metric": "personae --help (s, median of 5)", "value": round(statistics.median(help_times), 2),
         "target": "< 1.0"},
    ]
    report("foundation", rows)
    assert all(r > 0 for r in console_rates + raw_rates)

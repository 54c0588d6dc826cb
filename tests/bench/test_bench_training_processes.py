"""2 processes x 1 thread (`accelerate launch`, gloo) against 1 process x 2 threads: LoRA on SmolLM2, same data.

Run with `make bench` (PERSONAE_BENCH=1). Both train the same global batch (2 x 2 and 1 x 4 examples) in
child processes started as `personae train` starts them; steps/s counts the training loop only (rank 0's
clock), wall time includes starting the processes. On a 2-core machine the 2 ranks may well be slower
(gradient all-reduce over gloo, two copies of the model): the point is that the same code scales on GPUs.
"""

from __future__ import annotations

import os
import shutil
import time

from bench_utils import report

from runtime.training import curate
from runtime.training.child import train_in_subprocess
from runtime.training.config import TrainingConfig
from runtime.training.runs import start_run

STEPS = int(os.environ.get("PERSONAE_BENCH_PROCESS_STEPS", "6"))
METHOD = os.environ.get("PERSONAE_BENCH_PROCESS_METHOD", "lora")


def test_bench_two_processes_against_two_threads(make_engine, real_base):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from training_helpers import log_many

    engine = make_engine(real_base)
    log_many(engine.store, 32)
    character = engine.catalog.get("pixel")
    layouts = {"2 processes x 1 thread": dict(processes=2, subprocess_threads=1, batch_size=2),
               "1 process x 2 threads": dict(processes=1, subprocess_threads=2, batch_size=4)}
    results = {}
    for name, layout in layouts.items():
        config = TrainingConfig(method=METHOD, max_steps=STEPS, max_length=128, warmup=0, nice=0, **layout)
        dataset = curate(engine.store, character, engine.settings, config=config, pm=engine.pm)
        run_id = start_run(engine.store, "pixel", METHOD, "bench")
        started = time.perf_counter()
        staging, metrics = train_in_subprocess(engine, "pixel", dataset, config, None, run_id, real_base.folder)
        wall = time.perf_counter() - started
        shutil.rmtree(staging, ignore_errors=True)
        results[name] = {"steps_per_s": round(metrics["steps"] / metrics["seconds"], 3),
                         "tokens_per_s": metrics["tokens_per_s"], "wall_s": round(wall, 1),
                         "train_loss": metrics["train_loss"], "processes": metrics["processes"],
                         "global_batch": metrics["global_batch"], "steps": metrics["steps"]}
    two, one = results["2 processes x 1 thread"], results["1 process x 2 threads"]
    rows = [{"metric": f"{name} {key}", "value": value} for name, values in results.items()
            for key, value in values.items()]
    rows += [{"metric": "steps/s ratio 2x1 / 1x2", "value": round(two["steps_per_s"] / one["steps_per_s"], 2)},
             {"metric": "method, steps, cores", "value": f"{METHOD}, {STEPS}, {os.cpu_count()}"}]
    report("training_processes", rows)
    assert two["processes"] == 2 and one["processes"] == 1
    assert two["global_batch"] == one["global_batch"] and two["steps"] == one["steps"] == STEPS

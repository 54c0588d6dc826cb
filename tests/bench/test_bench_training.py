"""LoRA vs hybrid vs full on the same data (SmolLM2), and chat latency while a training runs in the background.

Run with `make bench` (PERSONAE_BENCH=1). Each method trains in its own low-priority subprocess (as the
scheduler runs it), so peak memory is that process's own maxrss.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import threading
import time

from bench_utils import RESULTS, report

from runtime.chat.engine import Turn
from runtime.training import curate, registry_for
from runtime.training.child import train_in_subprocess
from runtime.training.config import TrainingConfig
from runtime.training.runs import get_run, start_run

STEPS = int(os.environ.get("PERSONAE_BENCH_TRAIN_STEPS", "4"))
CHATS = int(os.environ.get("PERSONAE_BENCH_CHATS", "8"))


def _log(store, count):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from training_helpers import log_many

    log_many(store, count, user_id="u1", channel="c1")
    log_many(store, count, user_id="u2", channel="c2", start=count)


def _chat_latencies(engine, count: int) -> list[float]:
    latencies = []
    for i in range(count):
        started = time.perf_counter()
        engine.reply(Turn(platform="bench", channel=f"b{i % 3}", user_id="b", text=f"Tell me about level {i}",
                          character=engine.catalog.get("pixel"), sampling={"temperature": 0, "max_new_tokens": 16})).result()
        latencies.append(time.perf_counter() - started)
    return latencies


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def test_bench_training_methods_and_chat_latency(make_engine, real_base):
    engine = make_engine(real_base)
    _log(engine.store, 24)
    character = engine.catalog.get("pixel")
    registry = registry_for(engine)
    base_folder = real_base.folder
    methods = {}
    for method in ("lora", "hybrid", "full"):
        config = TrainingConfig(method=method, max_steps=STEPS, batch_size=2, max_length=128, warmup=0,
                                subprocess_threads=1, nice=0)
        dataset = curate(engine.store, character, engine.settings, config=config, pm=engine.pm)
        run_id = start_run(engine.store, "pixel", method, "bench")
        staging, metrics = train_in_subprocess(engine, "pixel", dataset, config, None, run_id, base_folder)
        version = registry.add(staging, "pixel", kind=method, metrics=metrics, data_hash=dataset.data_hash)
        shutil.rmtree(staging, ignore_errors=True)
        methods[method] = {**metrics, "registry_bytes": version.bytes}

    # Chat latency idle, then while a long LoRA training runs at low priority in the background.
    _chat_latencies(engine, 2)  # warm-up
    idle = _chat_latencies(engine, CHATS)
    config = TrainingConfig(max_steps=10_000, batch_size=2, max_length=128, subprocess_threads=1, nice=10)
    dataset = curate(engine.store, character, engine.settings, config=config, pm=engine.pm)
    stop = threading.Event()
    background_run = start_run(engine.store, "pixel", "lora", "bench-background")

    def background():
        try:
            train_in_subprocess(engine, "pixel", dataset, config, None, background_run, base_folder)
        except Exception:  # noqa: BLE001 - killed on purpose below
            pass
        finally:
            stop.set()

    thread = threading.Thread(target=background, daemon=True)
    thread.start()
    time.sleep(float(os.environ.get("PERSONAE_BENCH_TRAIN_WARMUP_S", "20")))  # let it reach the training loop
    busy = _chat_latencies(engine, CHATS)
    still_training = not stop.is_set()
    pid = get_run(engine.store, background_run)["pid"]
    if pid:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    thread.join(60)

    keys = ("seconds_per_step", "tokens_per_s", "peak_memory_mb", "trainable_params", "bytes_on_disk",
            "registry_bytes", "val_loss", "reference_val_loss")
    print("\n" + "method".ljust(10) + "".join(k.rjust(20) for k in keys))
    for method, metrics in methods.items():
        print(method.ljust(10) + "".join(str(metrics.get(k)).rjust(20) for k in keys))
    ratio = _p95(busy) / _p95(idle)
    rows = [{"metric": f"{method} {key}", "value": metrics.get(key)} for method, metrics in methods.items()
            for key in keys]
    rows += [
        {"metric": "chat p95 idle (s)", "value": round(_p95(idle), 3)},
        {"metric": "chat p95 during background training (s)", "value": round(_p95(busy), 3)},
        {"metric": "chat p95 ratio busy/idle", "value": round(ratio, 2), "target": "<= 2"},
        {"metric": "training was running throughout", "value": still_training},
        {"metric": "steps per method", "value": STEPS},
    ]
    report("training", rows)
    (RESULTS / "training_methods.json").write_text(json.dumps(methods, indent=2, default=str))
    assert all(m["steps"] == STEPS for m in methods.values())
    assert methods["lora"]["bytes_on_disk"] < methods["full"]["bytes_on_disk"]
    print(f"chat p95 idle {statistics.median(idle):.2f}s median; busy/idle p95 ratio {ratio:.2f} (target <= 2)")

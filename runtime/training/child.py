"""The serving side of a training run: start `python -m runtime.training.worker` as a low-priority child, wait, collect."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from runtime.training.config import TrainingError
from runtime.training.lifeline import PARENT_VARIABLE, child_setup
from runtime.training.runs import training_dir, update_run

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def train_in_subprocess(engine, character_id, dataset, config, reference, run_id, base_folder,
                        poll_seconds: float = 0.5) -> tuple[Path, dict]:
    """Train in a low-priority child process with bounded threads; return (staging folder, metrics)."""
    folder = training_dir(engine.settings, character_id)
    staging = folder / f"staging-{run_id}"
    request = folder / f"staging-{run_id}.request.json"
    result_path = folder / f"staging-{run_id}.result.json"
    log_path = folder / f"{run_id}.log"
    folder.mkdir(parents=True, exist_ok=True)
    request.write_text(json.dumps({
        "db_path": str(engine.settings.db_path), "base_folder": str(base_folder), "character": character_id,
        "config": config.to_dict(), "dataset": dataset.to_dict(), "reference": reference, "run_id": run_id,
        "staging": str(staging), "result": str(result_path),
    }, default=str))
    threads = max(1, int(config.subprocess_threads or 1))
    env = {**os.environ, **{name: str(threads) for name in THREAD_VARIABLES}, "TOKENIZERS_PARALLELISM": "false",
           "PERSONAE_TRAINING_THREADS": str(threads), PARENT_VARIABLE: str(os.getpid())}
    nice = int(config.nice)
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "runtime.training.worker", "--request", str(request)],
            # Its own process group (a Ctrl-C meant for the server is not its), but its life tied to ours:
            # if this process is killed, even with SIGKILL, the kernel kills the child too.
            stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            preexec_fn=child_setup(os.getpid(), nice),
        )
        update_run(engine.store, run_id, pid=process.pid, phase="loading")
        try:
            while process.poll() is None:
                time.sleep(poll_seconds)
        except BaseException:
            process.kill()  # the caller is going away: don't leave an orphan training
            process.wait()
            raise
    request.unlink(missing_ok=True)
    code = process.returncode
    if code != 0 or not result_path.is_file():
        tail = log_path.read_text(errors="replace")[-1500:] if log_path.exists() else ""
        result_path.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        if code is not None and code < 0:
            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
            raise TrainingError(f"the training process was killed ({name}) before it finished; nothing was "
                                f"registered (log: {log_path})")
        last = next((line for line in reversed(tail.strip().splitlines()) if line.strip()), "")
        raise TrainingError(f"the training process failed (exit {code}): {last} (log: {log_path})")
    result = json.loads(result_path.read_text())
    result_path.unlink(missing_ok=True)
    if result.get("error"):
        shutil.rmtree(staging, ignore_errors=True)
        raise TrainingError(result["error"])
    return staging, result["metrics"]

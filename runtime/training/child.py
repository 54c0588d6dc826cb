"""The serving side of a training run: start the worker (one process or `accelerate launch` ranks) low-priority, wait, collect."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from runtime.training.config import TrainingError
from runtime.training.launch import uses_accelerate, worker_command, worker_env
from runtime.training.lifeline import PARENT_VARIABLE, child_setup
from runtime.training.runs import training_dir, update_run

# torchrun's report names the rank that failed first: "Root Cause (first observed failure): ... rank : 1
# (local_rank: 1) ... exitcode : -9 (pid: 1234)"; the ranks it stopped afterwards are listed above it.
ROOT_CAUSE = re.compile(r"Root Cause.*?rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", re.DOTALL)


def _failed_rank(log_text: str) -> str | None:
    """Which rank failed first and how ("rank 1 was killed (SIGKILL)"), from the launcher's log."""
    match = ROOT_CAUSE.search(log_text)
    if not match:
        return None
    rank, code = int(match.group(1)), int(match.group(2))
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else f"signal {-code}"
        return f"rank {rank} was killed ({name})"
    return f"rank {rank} failed (exit {code})"


def _discard(staging: Path) -> None:
    """Remove a failed run's weights and the checkpoints its ranks were writing."""
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(staging.parent / (staging.name + ".checkpoints"), ignore_errors=True)


def _stop(process) -> None:
    """Kill the worker and every rank it started (they share its session)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def train_in_subprocess(engine, character_id, dataset, config, reference, run_id, base_folder,
                        poll_seconds: float = 0.5, preference=None, on_poll=None) -> tuple[Path, dict]:
    """Train in low-priority child processes with bounded threads; return (staging folder, metrics).

    With config.processes > 1 (or an accelerate config file) the child is `accelerate launch`, whose ranks
    train together; rank 0 alone writes the weights and the result file, this process registers them.
    """
    folder = training_dir(engine.settings, character_id)
    staging = folder / f"staging-{run_id}"
    request = folder / f"staging-{run_id}.request.json"
    result_path = folder / f"staging-{run_id}.result.json"
    log_path = folder / f"{run_id}.log"
    command, env = worker_command(config, request), worker_env(config)  # a bad launch setting fails here
    folder.mkdir(parents=True, exist_ok=True)
    request.write_text(json.dumps({
        "db_path": str(engine.settings.db_path), "base_folder": str(base_folder), "character": character_id,
        "config": config.to_dict(), "dataset": dataset.to_dict(), "reference": reference, "run_id": run_id,
        "staging": str(staging), "result": str(result_path),
        "preference": preference.to_dict() if preference is not None else None,
    }, default=str))
    env[PARENT_VARIABLE] = str(os.getpid())  # the worker (every rank) exits when this process is gone
    nice = int(config.nice)
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            # Its own process group (a Ctrl-C meant for the server is not its), but its life tied to ours:
            # if this process is killed, even with SIGKILL, the kernel kills the child too.
            command, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            preexec_fn=child_setup(os.getpid(), nice),
        )
        update_run(engine.store, run_id, pid=process.pid, phase="loading")
        try:
            while process.poll() is None:
                time.sleep(poll_seconds)
                if on_poll is not None:
                    on_poll(run_id)  # e.g. the showdown's progress line (the child writes its step to the log)
        except BaseException:
            _stop(process)  # the caller is going away: don't leave orphan ranks training
            raise
        if process.returncode != 0:
            _stop(process)  # a launcher that failed must not leave a rank behind

    request.unlink(missing_ok=True)
    code = process.returncode
    if code != 0 or not result_path.is_file():
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        tail = text[-1500:]
        result_path.unlink(missing_ok=True)
        _discard(staging)
        if code is not None and code < 0:
            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
            raise TrainingError(f"the training process was killed ({name}) before it finished; nothing was "
                                f"registered (log: {log_path})")
        failed = _failed_rank(text) if uses_accelerate(config) else None
        if failed:
            raise TrainingError(f"training process {failed} before the run finished; the other ranks were "
                                f"stopped and nothing was registered (log: {log_path})")
        last = next((line for line in reversed(tail.strip().splitlines()) if line.strip()), "")
        raise TrainingError(f"the training process failed (exit {code}): {last} (log: {log_path})")
    result = json.loads(result_path.read_text())
    result_path.unlink(missing_ok=True)
    if result.get("error"):
        _discard(staging)
        raise TrainingError(result["error"])
    return staging, result["metrics"]

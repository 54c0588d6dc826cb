"""The training process: `python -m runtime.training.worker` (scheduled runs, or under `accelerate launch`).

Two ways in:
  --request FILE   what the scheduler hands over: a curated dataset and where to write the weights; the
                   calling (serving) process registers, gates and promotes, so its hot swap fires there.
  --character NAME the whole retrain (curate, train, register, gate) in this process, e.g.
                   `accelerate launch -m runtime.training.worker --character pixel --method lora`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def train_in_subprocess(engine, character_id, dataset, config, reference, run_id, base_folder,
                        poll_seconds: float = 0.5) -> tuple[Path, dict]:
    """Train in a low-priority child process with bounded threads; return (staging folder, metrics)."""
    from runtime.training.config import TrainingError
    from runtime.training.runs import training_dir, update_run

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
           "PERSONAE_TRAINING_THREADS": str(threads)}
    nice = int(config.nice)
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "runtime.training.worker", "--request", str(request)],
            stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            preexec_fn=(lambda: os.nice(nice)) if nice > 0 else None,  # chats keep the CPU first
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
        import shutil

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
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        raise TrainingError(result["error"])
    return staging, result["metrics"]


def _run_request(path: Path) -> int:
    """Train what a request file describes; write the weights and a result file (never the registry)."""
    import errno

    from runtime.store import Store
    from runtime.training import _disk_full
    from runtime.training.config import TrainingConfig, TrainingError
    from runtime.training.curate import CuratedDataset
    from runtime.training.runs import update_run
    from runtime.training.trainer import run_training, write_run_files

    request = json.loads(path.read_text())
    threads = int(os.environ.get("PERSONAE_TRAINING_THREADS", "0") or 0)
    if threads:
        import torch

        torch.set_num_threads(threads)
        torch.set_num_interop_threads(threads)
    store = Store(request["db_path"])
    run_id, staging, result_path = request["run_id"], Path(request["staging"]), Path(request["result"])
    config = TrainingConfig.from_sources(request["config"])
    dataset = CuratedDataset.from_dict(request["dataset"])
    update_run(store, run_id, phase="training", pid=os.getpid())
    try:
        outcome = run_training(request["base_folder"], dataset, config, staging, reference=request["reference"],
                               progress=True)
        update_run(store, run_id, phase="saving")
        write_run_files(staging, outcome, config, dataset, f"{request['character']} · {config.method}")
        result = {"metrics": outcome["metrics"]}
    except TrainingError as error:
        result = {"error": str(error)}
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        result = {"error": str(_disk_full(staging))}
    temporary = result_path.with_suffix(".partial")
    temporary.write_text(json.dumps(result, default=str))
    os.replace(temporary, result_path)  # the result appears whole or not at all
    return 0


def _run_character(args) -> int:
    """The whole retrain in this process (the `accelerate launch` entry point)."""
    from runtime.config import load_settings
    from runtime.engine import build_engine
    from runtime.training import retrain
    from runtime.training.config import TrainingConfig

    settings = load_settings()
    engine = build_engine(settings)
    overrides = {k: v for k, v in {"rank": args.rank, "alpha": args.alpha, "epochs": args.epochs, "lr": args.lr,
                                   "max_steps": args.max_steps}.items() if v is not None}
    config = TrainingConfig.from_sources(settings.training, method=args.method, **overrides)
    outcome = retrain(engine, args.character, config=config, trigger="worker", gate=not args.no_gate)
    print(outcome.summary())
    return 0 if outcome.status in ("promoted", "candidate", "rejected") else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.training.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--request", type=Path, help="request file written by the scheduler")
    parser.add_argument("--character", help="train this character end to end (curate, train, register, gate)")
    parser.add_argument("--method", choices=("lora", "hybrid", "full"), default=None)
    parser.add_argument("--rank", type=int)
    parser.add_argument("--alpha", type=int)
    parser.add_argument("--epochs", type=float)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--no-gate", action="store_true", help="register a candidate only")
    args = parser.parse_args(argv)
    if args.request:
        return _run_request(args.request)
    if args.character:
        return _run_character(args)
    parser.error("give --request FILE or --character NAME")
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""The training process: `python -m runtime.training.worker` (scheduled runs, or under `accelerate launch`).

Two ways in:
  --request FILE   what `personae train` / the scheduler hands over: a curated dataset and where to write the
                   weights; the calling process registers, gates and promotes, so its hot swap fires there.
                   Under `accelerate launch` (processes > 1) every rank trains; rank 0 alone writes the
                   weights, the result file and the run's phase in the log.
  --character NAME the whole retrain (curate, train, register, gate) in this one process. Several processes:
                   `personae train NAME --processes N`, which curates and registers once and launches the ranks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from runtime.chat.build import build_engine
from runtime.config import load_settings
from runtime.errors import PersonaeError
from runtime.store import Store
from runtime.training import retrain
from runtime.training.config import METHODS, PREFERENCE_METHODS, TrainingConfig, TrainingError, disk_full
from runtime.training.curate import CuratedDataset
from runtime.training.launch import rank
from runtime.training.lifeline import watch_parent
from runtime.training.runs import update_run
from runtime.training.trainer import run_training, write_run_files


def _progress_writer(store, run_id: str, every_seconds: float = 1.0):
    """on_step for run_training: the global step into the run's row, at most once a second (and the last one)."""
    import time

    last = [0.0]

    def write(step: int, max_steps: int) -> None:
        if step >= max_steps or time.monotonic() - last[0] >= every_seconds:
            last[0] = time.monotonic()
            update_run(store, run_id, step=step, max_steps=max_steps)

    return write


def _run_request(path: Path) -> int:
    """Train what a request file describes; write the weights and a result file (never the registry)."""
    import errno


    request = json.loads(path.read_text())
    threads = int(os.environ.get("PERSONAE_TRAINING_THREADS", "0") or 0)
    if threads:
        import torch

        torch.set_num_threads(threads)
        torch.set_num_interop_threads(threads)
    main = rank() == 0  # the other ranks never open the log
    store = Store(request["db_path"]) if main else None
    run_id, staging, result_path = request["run_id"], Path(request["staging"]), Path(request["result"])
    config = TrainingConfig.from_sources(request["config"])
    dataset = CuratedDataset.from_dict(request["dataset"])
    if main:
        update_run(store, run_id, phase="training")  # pid stays the launched process's: stopping it stops all
    try:
        outcome = run_training(request["base_folder"], dataset, config, staging, reference=request["reference"],
                               progress=True, on_step=_progress_writer(store, run_id) if main else None,
                               preference=request.get("preference"))
        if not main:
            return 0
        update_run(store, run_id, phase="saving")
        write_run_files(staging, outcome, config, dataset, f"{request['character']} · {config.method}")
        result = {"metrics": outcome["metrics"]}
    except TrainingError as error:
        if not main:
            return 0  # every rank meets the same data problem; rank 0 reports it
        result = {"error": str(error)}
    except OSError as error:
        if error.errno != errno.ENOSPC or not main:
            raise
        result = {"error": str(disk_full(staging))}
    temporary = result_path.with_suffix(".partial")
    temporary.write_text(json.dumps(result, default=str))
    os.replace(temporary, result_path)  # the result appears whole or not at all
    return 0


def _run_character(args) -> int:
    """The whole retrain in this process (the `accelerate launch` entry point)."""
    settings = load_settings()
    engine = build_engine(settings)
    overrides = {k: v for k, v in {"rank": args.rank, "alpha": args.alpha, "epochs": args.epochs, "lr": args.lr,
                                   "max_steps": args.max_steps, "preference": args.preference}.items() if v is not None}
    config = TrainingConfig.from_sources(settings.training, method=args.method, **overrides)
    outcome = retrain(engine, args.character, config=config, trigger="worker", gate=not args.no_gate)
    print(outcome.summary())
    return 0 if outcome.status in ("promoted", "candidate", "rejected") else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.training.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--request", type=Path, help="request file written by the scheduler")
    parser.add_argument("--character", help="train this character end to end (curate, train, register, gate)")
    parser.add_argument("--method", choices=METHODS, default=None)
    parser.add_argument("--preference", choices=PREFERENCE_METHODS, default=None,
                        help="a preference stage after supervised training")
    parser.add_argument("--rank", type=int)
    parser.add_argument("--alpha", type=int)
    parser.add_argument("--epochs", type=float)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--no-gate", action="store_true", help="register a candidate only")
    args = parser.parse_args(argv)
    watch_parent()
    if args.request:
        return _run_request(args.request)
    if args.character:
        try:
            return _run_character(args)
        except PersonaeError as error:
            print(f"error: {error}", file=sys.stderr)
            return error.exit_code
    parser.error("give --request FILE or --character NAME")
    return 2


if __name__ == "__main__":
    sys.exit(main())

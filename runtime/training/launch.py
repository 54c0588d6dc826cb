"""How the training worker is started: one Python process, or `accelerate launch` with several ranks."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from runtime.training.config import TrainingConfig, TrainingError

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
WORKER = ("-m", "runtime.training.worker")


def uses_accelerate(config: TrainingConfig) -> bool:
    """Whether this run goes through `accelerate launch` (several processes, or an accelerate config file)."""
    return int(config.processes or 1) > 1 or bool(config.accelerate_config)


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _sharded_engine(path: Path) -> str | None:
    """"FSDP" or "DeepSpeed" when the accelerate config file asks for one, else None."""
    from accelerate.commands.config.config_args import load_config_from_file

    try:
        kind = str(load_config_from_file(str(path)).distributed_type or "")
    except Exception as error:  # noqa: BLE001 - accelerate's own parser: YAML/JSON errors, unknown keys
        raise TrainingError(f"accelerate config file {path} could not be read ({error}); check it with "
                            f"`accelerate launch --config_file {path} ...` or write it with `accelerate config`") from None
    return "FSDP" if "FSDP" in kind else "DeepSpeed" if "DEEPSPEED" in kind else None


def worker_command(config: TrainingConfig, request: Path) -> list[str]:
    """The command line that trains what `request` describes, on config.processes processes."""
    worker = [*WORKER, "--request", str(request)]
    if not uses_accelerate(config):
        return [sys.executable, *worker]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--main_process_port", "0"]
    if config.accelerate_config:
        path = Path(config.accelerate_config).expanduser()
        if not path.is_file():
            raise TrainingError(f"accelerate config file {path} not found: write one with `accelerate config "
                                "--config_file FILE` or remove accelerate_config from [training]")
        engine = _sharded_engine(path)
        if engine and not _has_gpu():
            raise TrainingError(
                f"{path} asks for {engine}, which needs GPUs: accelerate runs CPU ranks as plain DDP (MULTI_CPU) and "
                "would ignore it; remove accelerate_config to train on CPU processes, or train where GPUs are")
        launch += ["--config_file", str(path)]  # FSDP / DeepSpeed / GPU ids: the file decides
        if int(config.processes or 1) > 1:
            launch += ["--num_processes", str(config.processes)]
        return [*launch, *worker]
    # accelerate's own `--cpu` starts one process unless mpirun is installed; its torchrun launcher starts
    # the ranks, and ACCELERATE_USE_CPU (see worker_env) makes each rank join a gloo group on the CPU.
    launch += ["--multi_gpu", "--num_processes", str(config.processes), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no"]
    if not _has_gpu():
        launch += ["--num_cpu_threads_per_process", str(max(1, int(config.subprocess_threads or 1)))]
    return [*launch, *worker]


def worker_env(config: TrainingConfig) -> dict:
    """The worker's environment: bounded threads per process, CPU ranks when there is no GPU."""
    threads = max(1, int(config.subprocess_threads or 1))
    env = {**os.environ, **{name: str(threads) for name in THREAD_VARIABLES}, "TOKENIZERS_PARALLELISM": "false",
           "PERSONAE_TRAINING_THREADS": str(threads)}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)  # a launcher inside a launched process must start its own group
    if uses_accelerate(config) and not config.accelerate_config and not _has_gpu():
        env["ACCELERATE_USE_CPU"] = "true"
    return env


def rank() -> int:
    """This process's global rank under `accelerate launch` / torchrun (0 when launched alone)."""
    return int(os.environ.get("RANK", "0") or 0)


def world_size() -> int:
    """How many processes train together (1 when launched alone)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)

"""Training on several processes: `accelerate launch` with 2 CPU ranks x 1 thread (gloo) against one process."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import psutil
import pytest
import torch
from training_helpers import log_many

from runtime.training import registry_for, retrain, train
from runtime.training.config import TrainingConfig
from runtime.training.runs import character_lock, runs

# dropout 0: every rank draws its own dropout masks, which one process would draw differently.
RUN = dict(max_steps=3, max_length=96, lr=1e-3, warmup=0, threads=1, dropout=0.0, subprocess_threads=1, nice=0,
           gate="loss")


def _losses(folder) -> dict:
    history = json.loads((folder / "training.json").read_text())["log_history"]
    return {entry["step"]: entry["loss"] for entry in history if "loss" in entry}


def _logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer("BEEP! Hello player one, ready for the boss fight?", return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).logits.float()


def _load(registry, base, version):
    """A registered version as a model, loaded the way the serving side loads it."""
    import copy

    from peft import PeftModel

    from adapters.full_delta import load_full

    if version.kind == "full":
        return load_full(version.folder, base).eval()
    return PeftModel.from_pretrained(copy.deepcopy(base.model), version.folder).eval()


def _matches_one_process(engine, base, method, processes_batch, one_batch):
    """Train once in this process, once on 2 ranks with the same global batch; return both versions."""
    registry = registry_for(engine)
    one = train(engine, "pixel", method, config=TrainingConfig(method=method, batch_size=one_batch, **RUN),
                progress=False)
    assert one.metrics["processes"] == 1
    outcome = retrain(engine, "pixel", config=TrainingConfig(method=method, batch_size=processes_batch, processes=2,
                                                             **RUN), gate=False, progress=False)
    assert outcome.status == "candidate", outcome.reason
    two = outcome.version
    assert [v.number for v in registry.versions("pixel")] == [one.version.number, two.number]  # registered once
    metrics = outcome.metrics
    assert metrics["processes"] == 2 and metrics["global_batch"] == one.metrics["global_batch"] == one_batch
    assert metrics["pid"] != os.getpid() and metrics["steps"] == one.metrics["steps"] == RUN["max_steps"]
    # The loss curve counts global steps (one entry per step, not one per rank) and follows the 1-process one.
    curve_one, curve_two = _losses(one.version.folder), _losses(two.folder)
    assert sorted(curve_two) == sorted(curve_one) == [1, 2, 3]
    for step, loss in curve_one.items():
        assert curve_two[step] == pytest.approx(loss, rel=2e-3), (step, curve_one, curve_two)
    assert metrics["val_loss"] == pytest.approx(one.metrics["val_loss"], rel=2e-3)
    row = runs(engine.store, "pixel")[0]
    assert row["state"] == "candidate" and row["step"] == row["max_steps"] == RUN["max_steps"]
    # Both results load as models and answer alike.
    logits_one = _logits(_load(registry, base, one.version), base.tokenizer)
    logits_two = _logits(_load(registry, base, two), base.tokenizer)
    logits_base = _logits(base.model, base.tokenizer)
    moved = (logits_one - logits_base).abs().max().item()
    assert moved > 1e-3  # training changed the model, so the comparison below means something
    assert (logits_two - logits_one).abs().max().item() < 0.02 * moved + 1e-4
    return one, outcome


@pytest.mark.parametrize("method", ["lora", "hybrid", "full"])
def test_two_cpu_processes_train_like_one(make_engine, tiny_base, method):
    engine = make_engine(tiny_base)
    log_many(engine.store, 16)
    _, outcome = _matches_one_process(engine, tiny_base, method, processes_batch=2, one_batch=4)
    assert outcome.version.kind == method
    assert not list((engine.settings.data_path / "training" / "pixel").glob("staging-*"))


def _ranks(launcher_pid: int) -> dict[int, psutil.Process]:
    """The launched worker processes by their RANK."""
    found = {}
    try:
        children = psutil.Process(launcher_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return found
    for child in children:
        try:
            if "runtime.training.worker" in " ".join(child.cmdline()) and "RANK" in child.environ():
                found[int(child.environ()["RANK"])] = child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_a_rank_killed_midway_fails_the_scheduled_run_and_registers_nothing(make_engine, tiny_base, tmp_path):
    from helpers_adapters import train_tiny_lora

    from runtime.jobs import run_now

    # The scheduler's retraining reads processes from [training], like `personae serve` does.
    engine = make_engine(tiny_base, training={**RUN, "max_steps": 400, "batch_size": 2, "processes": 2})
    log_many(engine.store, 12)
    registry = registry_for(engine)
    active = registry.add(train_tiny_lora(tiny_base, tmp_path / "v1", steps=1), "pixel", activate=True)
    before = [(v.number, v.state) for v in registry.versions("pixel")]
    box = {}
    worker = threading.Thread(target=lambda: box.update(outcome=run_now(engine, "pixel", force=True)))
    worker.start()
    deadline, ranks, launcher = time.monotonic() + 240, {}, None
    while time.monotonic() < deadline:
        rows = runs(engine.store, "pixel")
        if rows and rows[0]["pid"] and (rows[0]["step"] or 0) >= 2:  # training steps are under way
            launcher = rows[0]["pid"]
            ranks = _ranks(launcher)
            break
        time.sleep(0.2)
    assert sorted(ranks) == [0, 1], f"the two ranks never got to training ({ranks})"
    pids = [process.pid for process in ranks.values()]
    os.kill(ranks[1].pid, signal.SIGKILL)  # a real process dies mid-run
    worker.join(120)
    outcome = box["outcome"]
    assert outcome.status == "failed" and "rank 1 was killed (SIGKILL)" in outcome.reason and "nothing was registered" in \
        outcome.reason
    assert [(v.number, v.state) for v in registry.versions("pixel")] == before
    assert registry.active("pixel").number == active.number
    row = runs(engine.store, "pixel")[0]
    assert row["state"] == "failed" and "killed" in row["reason"]
    assert not list((engine.settings.data_path / "training" / "pixel").glob("staging-*"))
    assert not [pid for pid in [launcher, *pids] if psutil.pid_exists(pid) and
                psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]  # no rank left training
    with character_lock(engine.settings, "pixel"):  # the next run is free to start
        pass


@pytest.mark.real_model
def test_personae_train_on_two_processes_matches_one_on_smollm2(make_engine, real_base, tmp_path):
    """`personae train NAME --processes 2` on the real model, [training] from personae.toml."""
    from click.testing import CliRunner

    from runtime.cli import cli

    table = {k: v for k, v in RUN.items() if k != "max_steps"}
    (tmp_path / "personae.toml").write_text("[training]\n" + "".join(
        f"{key} = {json.dumps(value)}\n" for key, value in table.items()))  # the tests run in tmp_path
    engine = make_engine(real_base)
    log_many(engine.store, 24)
    registry = registry_for(engine)
    one = train(engine, "pixel", "lora", config=TrainingConfig.from_sources(engine.settings.training,
                                                                            batch_size=4, max_steps=3),
                progress=False)
    result = CliRunner().invoke(cli, ["train", "pixel", "--processes", "2", "--batch-size", "2", "--max-steps", "3",
                                      "--no-gate"], env={"PERSONAE_BASE_MODEL": str(real_base.folder)})
    assert result.exit_code == 0, result.output
    assert "candidate pixel@2" in result.output and "processes=2" in result.output
    two = registry.get("pixel", 2)
    assert two.manifest["training"]["processes"] == 2 and two.manifest["metrics"]["global_batch"] == 4
    curve_one, curve_two = _losses(one.version.folder), _losses(two.folder)
    assert sorted(curve_two) == sorted(curve_one) == [1, 2, 3]
    for step, loss in curve_one.items():
        assert curve_two[step] == pytest.approx(loss, rel=2e-3), (step, curve_one, curve_two)
    logits_one = _logits(_load(registry, real_base, one.version), real_base.tokenizer)
    logits_two = _logits(_load(registry, real_base, two), real_base.tokenizer)
    moved = (logits_one - _logits(real_base.model, real_base.tokenizer)).abs().max().item()
    assert moved > 1e-3
    assert (logits_two - logits_one).abs().max().item() < 0.02 * moved + 1e-4


def test_launch_settings_that_cannot_work_fail_clearly_before_any_process_starts(make_engine, tiny_base, tmp_path):
    engine = make_engine(tiny_base)
    log_many(engine.store, 12)
    fsdp = tmp_path / "fsdp.yaml"
    fsdp.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: FSDP\nnum_processes: 2\nuse_cpu: true\n"
                    "mixed_precision: 'no'\nfsdp_config:\n  fsdp_version: 2\n")
    cases = [(fsdp, "asks for FSDP, which needs GPUs"), (tmp_path / "missing.yaml", "not found")]
    for path, message in cases:
        config = TrainingConfig(**RUN, processes=2, accelerate_config=str(path))
        outcome = retrain(engine, "pixel", config=config, gate=False, progress=False)
        assert outcome.status == "failed" and message in outcome.reason, outcome.reason
    assert registry_for(engine).versions("pixel") == []
    assert not list((engine.settings.data_path / "training" / "pixel").glob("staging-*"))
    with pytest.raises(Exception, match="processes must be a whole number"):
        TrainingConfig(processes=0)

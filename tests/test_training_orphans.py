"""A training child dies with its parent, even a SIGKILLed one; the next start sweeps what the run left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from runtime.training.runs import character_lock, runs, sweep_stale

TESTS = Path(__file__).parent
PARENT = textwrap.dedent("""
    import sys
    from training_helpers import log_many
    from runtime.chat.build import build_engine
    from runtime.config import load_settings
    from runtime.jobs import run_now

    settings = load_settings({"base_model": sys.argv[1],
                              "training": {"max_steps": 400, "max_length": 96, "batch_size": 2}})
    engine = build_engine(settings)
    log_many(engine.store, 12)
    run_now(engine, "pixel", force=True)  # trains in a child process, as `schedule run-now` does
""")


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def wait_for(condition, seconds: float, step: float = 0.2):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_killing_the_parent_kills_the_training_child_and_the_next_start_sweeps(
        make_engine, tiny_base, tiny_model_folder, isolated_environment):
    script = isolated_environment / "parent.py"
    script.write_text(PARENT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
    parent = subprocess.Popen([sys.executable, str(script), str(tiny_model_folder)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    engine = make_engine(tiny_base)  # the same data dir, read from here

    def training_child():
        if parent.poll() is not None:
            raise AssertionError(parent.stderr.read().decode()[-2000:])
        try:
            rows = runs(engine.store, "pixel")
        except Exception:  # the parent has not made its tables yet
            return None
        pid = rows[0]["pid"] if rows and rows[0]["state"] == "running" else None
        return pid if pid and pid != parent.pid and alive(pid) else None

    child = wait_for(training_child, 180)
    assert child, "the training child never started"
    staging = engine.settings.data_path / "training" / "pixel"
    assert wait_for(lambda: list(staging.glob("staging-*")), 60), "the run wrote no staging files"
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(30)
    assert wait_for(lambda: not alive(child), 20), f"training child {child} outlived its SIGKILLed parent"

    # What the dead run left: its staging files and a row still saying 'running'.
    assert runs(engine.store, "pixel")[0]["state"] == "running" and list(staging.glob("staging-*"))
    swept = sweep_stale(engine.settings, engine.store)
    assert swept and all(name.startswith("pixel/staging-") for name in swept)
    assert not list(staging.glob("staging-*"))
    row = runs(engine.store, "pixel")[0]
    assert row["state"] == "failed" and "interrupted" in row["reason"]
    with character_lock(engine.settings, "pixel"):  # the next run is free to start
        pass


def test_the_sweep_leaves_a_run_that_holds_its_lock_alone(make_engine, tiny_base):
    from runtime.training.runs import start_run, training_dir

    engine = make_engine(tiny_base)
    run_id = start_run(engine.store, "pixel", "lora", "cli")
    folder = training_dir(engine.settings, "pixel")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"staging-{run_id}").mkdir()
    with character_lock(engine.settings, "pixel"):  # training right now (here, or in another process)
        assert sweep_stale(engine.settings, engine.store) == []
        assert runs(engine.store, "pixel")[0]["state"] == "running"
    assert sweep_stale(engine.settings, engine.store) == [f"pixel/staging-{run_id}"]


def test_the_scheduler_sweeps_on_start(make_engine, tiny_base):
    from runtime.jobs import start_scheduler
    from runtime.training.runs import start_run, training_dir

    engine = make_engine(tiny_base)
    run_id = start_run(engine.store, "pixel", "lora", "schedule")
    (training_dir(engine.settings, "pixel") / f"staging-{run_id}").mkdir(parents=True)
    scheduler = start_scheduler(engine, persistent=False)
    try:
        assert runs(engine.store, "pixel")[0]["state"] == "failed"
        assert not (training_dir(engine.settings, "pixel") / f"staging-{run_id}").exists()
    finally:
        scheduler.shutdown(wait=False)


def test_a_child_whose_parent_is_gone_before_it_starts_exits(tmp_path):
    # The race prctl cannot cover: the parent died between fork and exec. The watchdog covers it too.
    code = "from runtime.training.lifeline import watch_parent; import time; watch_parent(0.05); time.sleep(30)"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a serving process that has already exited
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent), "PERSONAE_TRAINING_PARENT": str(gone.pid)}
    started = time.monotonic()
    process = subprocess.run([sys.executable, "-c", code], env=env, timeout=25)
    assert process.returncode == 1 and time.monotonic() - started < 25

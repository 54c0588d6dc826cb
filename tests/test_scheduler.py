"""The real APScheduler: persisted schedules, plugin jobs, skips, and a training process killed midway."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from click.testing import CliRunner
from training_helpers import log_many

from runtime.chat.build import build_engine
from runtime.cli import cli
from runtime.config import load_settings
from runtime.hookspecs import hookimpl
from runtime.jobs import (
    JOB_PREFIX,
    ScheduleError,
    add_schedule,
    list_schedules,
    remove_schedule,
    run_now,
    start_scheduler,
)
from runtime.training import registry_for
from runtime.training.runs import character_lock, runs


def test_schedules_survive_a_scheduler_restart():
    settings = load_settings()
    added = add_schedule(settings, "pixel", "0 3 * * *", "hybrid", 25)
    assert added["next_run"].hour == 3 and added["method"] == "hybrid"
    engine = build_engine(settings)
    first = start_scheduler(engine)
    try:
        job = first.get_job(JOB_PREFIX + "pixel")
        assert job is not None and job.coalesce and job.max_instances == 1 and job.misfire_grace_time > 0
    finally:
        first.shutdown(wait=False)
    again = start_scheduler(build_engine(settings))  # a new process would see the same
    try:
        assert again.get_job(JOB_PREFIX + "pixel").kwargs["min_new_turns"] == 25
    finally:
        again.shutdown(wait=False)
    assert [(s["character"], s["cron"], s["method"], s["min_new_turns"]) for s in list_schedules(settings)] == [
        ("pixel", "0 3 * * *", "hybrid", 25)]
    remove_schedule(settings, "pixel")
    assert list_schedules(settings) == []
    with pytest.raises(ScheduleError, match="no schedule"):
        remove_schedule(settings, "pixel")
    with pytest.raises(ScheduleError, match="crontab"):
        add_schedule(settings, "pixel", "every night")


def test_schedule_commands():
    runner = CliRunner()
    added = runner.invoke(cli, ["schedule", "add", "pixel", "--cron", "30 4 * * 1", "--min-new-turns", "7"])
    assert added.exit_code == 0, added.output
    assert "next run" in added.output
    listed = runner.invoke(cli, ["schedule", "list"])
    assert "pixel" in listed.output and "30 4 * * 1" in listed.output and "never" in listed.output
    bad = runner.invoke(cli, ["schedule", "add", "pixel", "--cron", "61 * * * *"])
    assert bad.exit_code == 2 and "crontab" in bad.output
    unknown = runner.invoke(cli, ["schedule", "add", "nobody", "--cron", "0 3 * * *"])
    assert unknown.exit_code == 2 and "unknown character" in unknown.output
    removed = runner.invoke(cli, ["schedule", "remove", "pixel"])
    assert removed.exit_code == 0 and "no schedules" in runner.invoke(cli, ["schedule", "list"]).output


def test_plugin_jobs_run_through_register_jobs():
    from apscheduler.triggers.date import DateTrigger

    ran = threading.Event()

    class Plugin:
        @hookimpl
        def register_jobs(self, register):
            register("nightly-report", lambda engine: ran.set(), DateTrigger())

    engine = build_engine(load_settings())
    plugin = Plugin()
    engine.pm.register(plugin)
    try:
        scheduler = start_scheduler(engine)
    finally:
        engine.pm.unregister(plugin)
    try:
        assert ran.wait(10)
        deadline = time.monotonic() + 5
        while scheduler.get_job("plugin:nightly-report") and time.monotonic() < deadline:
            time.sleep(0.05)  # a one-off job is dropped once it has run
    finally:
        scheduler.shutdown(wait=False)


def test_a_run_is_skipped_with_a_reason_when_too_few_new_turns(make_engine, tiny_base):
    engine = make_engine(tiny_base)
    log_many(engine.store, 10)
    add_schedule(engine.settings, "pixel", "0 3 * * *", min_new_turns=50)
    outcome = run_now(engine, "pixel")
    assert outcome.status == "skipped"
    assert "10 new curated turns" in outcome.reason and "50 needed" in outcome.reason
    row = runs(engine.store, "pixel")[0]
    assert row["state"] == "skipped" and row["reason"] == outcome.reason
    assert registry_for(engine).versions("pixel") == []


def test_killed_training_leaves_the_registry_as_it_was(make_engine, tiny_base, tmp_path):
    from helpers_adapters import train_tiny_lora

    engine = make_engine(tiny_base, training={"max_steps": 200, "max_length": 96, "batch_size": 2})
    log_many(engine.store, 12)
    registry = registry_for(engine)
    active = registry.add(train_tiny_lora(tiny_base, tmp_path / "v1", steps=1), "pixel", activate=True)
    before = [(v.number, v.state) for v in registry.versions("pixel")]
    box = {}
    worker = threading.Thread(target=lambda: box.update(outcome=run_now(engine, "pixel", force=True)))
    worker.start()
    deadline = time.monotonic() + 180
    pid = None
    while time.monotonic() < deadline and pid is None:
        rows = runs(engine.store, "pixel")
        if rows and rows[0]["phase"] == "training" and rows[0]["pid"] and rows[0]["pid"] != os.getpid():
            pid = rows[0]["pid"]
        time.sleep(0.2)
    assert pid, "the training process never started"
    time.sleep(1.0)  # well inside loading / training
    os.kill(pid, signal.SIGKILL)
    worker.join(120)
    outcome = box["outcome"]
    assert outcome.status == "failed" and "killed (SIGKILL)" in outcome.reason
    assert [(v.number, v.state) for v in registry.versions("pixel")] == before
    assert registry.active("pixel").number == active.number
    assert runs(engine.store, "pixel")[0]["state"] == "failed"
    folder = engine.settings.data_path / "training" / "pixel"
    assert not list(folder.glob("staging-*"))
    with character_lock(engine.settings, "pixel"):  # the next run is free to start
        pass

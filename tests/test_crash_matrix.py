"""Real processes SIGKILLed at random moments while they add adapters, promote versions, or a training run
writes its result: afterwards SQLite is intact, the registry points only at whole versions, nothing stored
before is lost, leftovers are swept, and the interrupted operation works the next time.

`make test` tries a few moments of each; `make stress` (PERSONAE_STRESS=1) twenty. The seed is printed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers_adapters import train_tiny_lora

from adapters.registry import Registry
from runtime.store import Store

TESTS = Path(__file__).parent
MOMENTS = 20 if os.environ.get("PERSONAE_STRESS") else 3
TRAINING_MOMENTS = 20 if os.environ.get("PERSONAE_STRESS") else 1  # a process start and a short training each
TRAINING = {"max_steps": 4, "max_length": 64, "batch_size": 2}
SEED = int(os.environ.get("PERSONAE_CRASH_SEED") or time.time_ns() % 100_000)

# Adds distinct copies of one adapter, or promotes versions 1 and 2 in turn, until it is killed.
LOOP = textwrap.dedent("""
    import os, shutil, sys
    from pathlib import Path
    from adapters.registry import Registry
    from runtime.store import Store

    root, operation, source = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    registry = Registry(root, Store(root.parent / "personae.db"))
    print("ready", flush=True)
    for i in range(1, 10**6):
        if operation == "add":
            folder = source.parent / f"copy-{os.getpid()}-{i}"
            shutil.copytree(source, folder)
            (folder / "notes.txt").write_text(f"copy {os.getpid()}-{i}")  # other files: a new version each time
            print("added", registry.add(folder, "pixel").number, flush=True)
        else:
            target = 2 if registry.active("pixel").number == 1 else 1
            print("promoted", registry.promote("pixel", target).number, flush=True)
""")

# One whole retrain in this process (curate, train, write, register), as `personae train` does.
TRAIN = textwrap.dedent("""
    import json, sys
    import torch
    torch.set_num_threads(1)
    from runtime.chat.build import build_engine
    from runtime.config import load_settings
    from runtime.training import retrain

    settings = load_settings({"base_model": sys.argv[1], "training": json.loads(sys.argv[2])})
    engine = build_engine(settings)
    print("ready", flush=True)
    outcome = retrain(engine, "pixel", in_subprocess=False, gate=False, progress=False)
    print("outcome", outcome.status, outcome.version and outcome.version.number, flush=True)
""")


def integrity(db_path: Path) -> None:
    with sqlite3.connect(db_path) as db:
        assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
        assert db.execute("pragma foreign_key_check").fetchall() == []


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in [*root.glob("*/.*-*"), *root.glob(".scratch-*")] if p.is_dir())


def check_registry(root: Path, db_path: Path) -> Registry:
    """Reopen as a restarted server would; every version it lists is whole, every whole folder is listed."""
    integrity(db_path)
    registry = Registry(root, Store(db_path))
    assert leftovers(root) == [], "the restart did not sweep what the killed process left"
    listed = {v.number: v for v in registry.versions("pixel")}
    for version in listed.values():
        if version.state != "failed":
            registry.verify(version)  # every file there, hashes as recorded
    on_disk = {int(p.name) for p in (root / "pixel").iterdir() if p.name.isdigit()} if (root / "pixel").exists() else set()
    assert on_disk <= set(listed) | {v.number for v in registry.versions("pixel", include_removed=True)}
    assert len(registry.store.query("select 1 from adapter_versions where character = 'pixel' and state = 'active'")) <= 1
    return registry


def kill_at_random(command: list[str], delay: float, env=None, trigger=None) -> tuple[list[str], bool, float]:
    """Start a process, wait for its 'ready' (and then for trigger() if given), SIGKILL it `delay` seconds later.

    Returns its output lines, whether it was still running when killed, and the seconds from 'ready' (or the
    trigger) to its end.
    """
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)]),
                                    **(env or {})})
    first = process.stdout.readline()
    assert first.strip() == "ready", first + process.stderr.read()[-3000:]
    while trigger is not None and process.poll() is None and not trigger():
        time.sleep(0.01)
    ready = time.monotonic()
    try:
        process.wait(delay)
    except subprocess.TimeoutExpired:
        pass
    killed = process.poll() is None
    if killed:
        os.kill(process.pid, signal.SIGKILL)
    out, err = process.communicate(timeout=120)
    assert killed or process.returncode == 0, err[-3000:]
    return out.splitlines(), killed, time.monotonic() - ready


@pytest.fixture(scope="module")
def lora(tmp_path_factory, tiny_base):
    return train_tiny_lora(tiny_base, tmp_path_factory.mktemp("crash") / "lora", steps=1)


@pytest.fixture
def stored(tmp_path, lora):
    """A registry that already holds pixel@1 (active) and pixel@2 (candidate): what must never be lost."""
    root, db_path = tmp_path / "data" / "adapters", tmp_path / "data" / "personae.db"
    registry = Registry(root, Store(db_path))
    registry.add(lora, "pixel", activate=True)
    other = tmp_path / "other"
    shutil.copytree(lora, other)
    (other / "notes.txt").write_text("the second version")
    registry.add(other, "pixel")
    return root, db_path, {v.number: v.manifest["content_sha256"] for v in registry.versions("pixel")}


def test_adding_adapters_killed_at_random_moments(stored, lora):
    root, db_path, before = stored
    rng, seen = random.Random(SEED), Counter()
    print(f"\ncrash seed {SEED}")
    for moment in range(MOMENTS):
        lines, killed, _ = kill_at_random([sys.executable, "-c", LOOP, str(root), "add", str(lora)],
                                          rng.uniform(0.0, 0.6))
        finished = [int(line.split()[1]) for line in lines if line.startswith("added")]
        half = [p for p in leftovers(root) if p.startswith(".tmp-")]
        seen["mid-copy" if half else "between adds"] += 1
        registry = check_registry(root, db_path)
        versions = {v.number: v for v in registry.versions("pixel")}
        for number, content in before.items():  # stored before: untouched
            assert versions[number].manifest["content_sha256"] == content
        assert versions[1].state == "active" and versions[2].state == "candidate"
        for number in finished:  # every add that returned is there, whole
            assert versions[number].state == "candidate"
        recovered = [v for v in versions.values() if v.reason.startswith("recovered")]
        seen["recovered after rename"] = len(recovered)
        before = {n: v.manifest["content_sha256"] for n, v in versions.items()}
    # The next add works and gets a fresh number.
    nxt = Registry(root, Store(db_path)).add(lora.parent / "lora", "pixel", dedup=False)
    assert nxt.number > max(before) and nxt.state == "candidate"
    print(f"adds killed at {MOMENTS} moments: {dict(seen)}; versions now {nxt.number}")


def test_promotions_killed_at_random_moments(stored):
    root, db_path, before = stored
    rng, seen = random.Random(SEED + 1), Counter()
    for moment in range(MOMENTS):
        lines, _, _ = kill_at_random([sys.executable, "-c", LOOP, str(root), "promote", "-"], rng.uniform(0.0, 0.6))
        registry = check_registry(root, db_path)
        versions = {v.number: v for v in registry.versions("pixel")}
        assert sorted(versions) == [1, 2]
        states = sorted(v.state for v in versions.values())
        assert states == ["active", "retired"], states  # never none active, never two
        for number, content in before.items():
            assert versions[number].manifest["content_sha256"] == content
        # The history agrees with the states: the last 'active' event names the active version.
        last = registry.store.query("select number from adapter_events where character = 'pixel' and "
                                    "action = 'active' order by id desc limit 1")[0]["number"]
        assert last == registry.active("pixel").number
        seen[sum(1 for line in lines if line.startswith("promoted"))] += 1
    registry = Registry(root, Store(db_path))
    other = 2 if registry.active("pixel").number == 1 else 1
    assert registry.promote("pixel", other).state == "active"
    print(f"\npromotions killed at {MOMENTS} moments; promotions finished before each kill: {dict(seen)}")


def test_training_runs_killed_while_writing_their_result(tmp_path, tiny_model_folder, make_engine, tiny_base):
    from training_helpers import log_many

    from runtime.training import retrain
    from runtime.training.runs import runs, sweep_stale, training_dir

    engine = make_engine(tiny_base, training=TRAINING)
    log_many(engine.store, 12)
    db_path, root = engine.settings.db_path, engine.settings.data_path / "adapters"
    staging = training_dir(engine.settings, "pixel")

    def writing() -> bool:  # the trained weights have started to land in the run's staging folder
        return any(p.is_dir() and not p.name.endswith(".checkpoints") and any(p.iterdir())
                   for p in staging.glob("staging-*"))

    command = [sys.executable, "-c", TRAIN, str(tiny_model_folder), json.dumps(TRAINING)]
    # A whole run first: what it stores must survive the kills, and it times the write to aim at.
    lines, _, window = kill_at_random(command, 600, trigger=writing)
    assert lines[-1] == "outcome candidate 1", lines
    stored = Registry(root, Store(db_path)).get("pixel", 1).manifest["content_sha256"]
    rng, moments, known = random.Random(SEED + 2), Counter(), 1
    for moment in range(TRAINING_MOMENTS):
        # From the first file of the result to a little past the end: writing the weights, the loss plot and
        # the run's log, hashing, copying into the registry, renaming, recording.
        lines, killed, _ = kill_at_random(command, rng.uniform(0.0, 1.1 * window), trigger=writing)
        rows = runs(Store(db_path), "pixel")
        moments["killed" if killed else "finished"] += 1
        integrity(db_path)
        swept = sweep_stale(engine.settings, Store(db_path))  # what a restarted server does first
        moments["left staging files"] += any(not name.endswith(".log") for name in swept)
        assert not list(staging.glob("staging-*"))
        assert all(row["state"] != "running" for row in runs(Store(db_path), "pixel"))
        registry = check_registry(root, db_path)
        assert registry.get("pixel", 1).manifest["content_sha256"] == stored
        count = len(registry.versions("pixel"))
        moments["a version was registered"] += count > known
        known = count
        if not killed:
            assert lines[-1].startswith("outcome candidate"), lines
        assert rows  # the run was recorded
    # The next run works.
    outcome = retrain(engine, "pixel", in_subprocess=False, gate=False, progress=False)
    assert outcome.status == "candidate", outcome.reason
    check_registry(root, db_path)
    print(f"\ntraining killed while writing its result ({window:.2f} s from its first file to the end) at "
          f"{TRAINING_MOMENTS} moments: {dict(moments)}")

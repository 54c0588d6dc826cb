"""Training runs in the log (what ran, why it was skipped or failed) and the per-character training lock."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

from runtime.errors import Conflict
from runtime.store import now

migrations = sqlite_utils.Migrations("personae.training")


@migrations(name="m001_training_runs")
def m001_training_runs(db: sqlite_utils.Database) -> None:
    """One row per training attempt: scheduled, run-now or from the command line."""
    db["training_runs"].create(
        {
            "id": str, "character": str, "method": str, "trigger": str,
            "state": str,  # running | candidate | promoted | rejected | failed | skipped
            "phase": str,  # curating | loading | training | saving | registering | gating | done
            "reason": str, "version": int, "data_hash": str, "last_message_id": int, "new_turns": int,
            "metrics": str, "gate": str, "pid": int, "started": str, "finished": str,
        },
        pk="id",
    )
    db["training_runs"].create_index(["character", "started"])


@migrations(name="m002_training_progress")
def m002_training_progress(db: sqlite_utils.Database) -> None:
    """The run's global optimiser step (one count for all ranks) and how many steps it will take."""
    db["training_runs"].add_column("step", int)
    db["training_runs"].add_column("max_steps", int)


class TrainingBusy(Conflict, RuntimeError):
    """Another training of the same character is running (in this or another process)."""


def ensure_tables(store) -> None:
    """Apply the training migrations (idempotent)."""
    store.apply_migrations(migrations)


def start_run(store, character: str, method: str, trigger: str, **fields) -> str:
    """Record a new run; return its id."""
    ensure_tables(store)
    run_id = now().replace(":", "").replace("-", "").replace(".", "")[:15] + "-" + uuid.uuid4().hex[:6]
    row = {"id": run_id, "character": character, "method": method, "trigger": trigger, "state": "running",
           "phase": "curating", "started": now(), **fields}
    store.write(lambda: store.db["training_runs"].insert(row))
    return run_id


def update_run(store, run_id: str, **fields) -> None:
    """Change fields of a run (dicts are stored as JSON)."""
    ensure_tables(store)
    fields = {k: json.dumps(v, default=str) if isinstance(v, (dict, list)) else v for k, v in fields.items()}
    if fields.get("state") in ("candidate", "promoted", "rejected", "failed", "skipped"):
        fields.setdefault("finished", now())
    store.write(lambda: store.db["training_runs"].update(run_id, fields))


def get_run(store, run_id: str) -> dict | None:
    ensure_tables(store)
    rows = store.query("select * from training_runs where id = ?", [run_id])
    return rows[0] if rows else None


def runs(store, character: str | None = None, limit: int = 20) -> list[dict]:
    """The latest runs, newest first."""
    ensure_tables(store)
    if character:
        return store.query("select * from training_runs where character = ? order by started desc limit ?",
                           [character, limit])
    return store.query("select * from training_runs order by started desc limit ?", [limit])


def last_trained_message_id(store, character: str) -> int:
    """The newest logged reply the last successful training saw (0 when never trained)."""
    ensure_tables(store)
    rows = store.query(
        "select max(last_message_id) as last from training_runs where character = ? "
        "and state in ('candidate', 'promoted', 'rejected')", [character])
    return int(rows[0]["last"] or 0) if rows else 0


def training_dir(settings, character: str) -> Path:
    """Where a character's staging folders, logs and lock live."""
    return Path(settings.data_dir).expanduser() / "training" / character


@contextmanager
def character_lock(settings, character: str):
    """Hold the character's training lock (an flock: the kernel frees it if the holder dies)."""
    folder = training_dir(settings, character)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".lock"
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise TrainingBusy(f"{character} is already training (pid {holder}); wait for it to finish") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield folder
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def clean_stale(settings, character: str, store=None) -> list[str]:
    """Remove what a killed run left behind (staging folders, checkpoints) and mark its row failed."""
    folder = training_dir(settings, character)
    removed = []
    for path in folder.glob("staging-*"):
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        removed.append(path.name)
    if store is not None:
        ensure_tables(store)
        for row in store.query("select id from training_runs where character = ? and state = 'running'", [character]):
            update_run(store, row["id"], state="failed", reason="interrupted: the process running it ended")
    return removed


def sweep_stale(settings, store) -> list[str]:
    """On start: clean every character whose training lock nobody holds (their runs ended with a process)."""
    root = Path(settings.data_dir).expanduser() / "training"
    swept = []
    characters = {p.name for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()
    ensure_tables(store)
    characters |= {row["character"] for row in store.query(
        "select distinct character from training_runs where state = 'running'")}
    for character in sorted(characters):
        try:
            with character_lock(settings, character):
                swept += [f"{character}/{name}" for name in clean_stale(settings, character, store)]
        except TrainingBusy:
            continue  # training right now, in another process: its leftovers are not leftovers
    return swept

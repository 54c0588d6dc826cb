"""Scheduled retraining (and plugins' jobs) with APScheduler, persisted in data_dir/schedules.db."""

from __future__ import annotations

import logging
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path

from runtime.errors import PersonaeError
from runtime.training import RetrainOutcome, TrainingBusy, retrain
from runtime.training.config import METHODS, TrainingConfig

log = logging.getLogger(__name__)

JOBSTORE = "schedules"  # persisted: the users' retraining schedules
MEMORY = "default"  # in memory: plugin jobs and internal ones, re-registered at every start
JOB_PREFIX = "retrain:"
MISFIRE_GRACE_SECONDS = 6 * 3600  # a run missed while the server was down still happens (once) within this
REFRESH_SECONDS = 30  # how often the running scheduler re-reads schedules other processes wrote

_engines: dict = {}  # the engine the persisted jobs run against, set by start_scheduler
_schedulers: dict = {}  # id(engine) -> the scheduler started for it


class ScheduleError(PersonaeError, ValueError):
    """A schedule that cannot be added or found; the message says what to do."""


def schedules_url(settings) -> str:
    """SQLAlchemy URL of the SQLite job store."""
    path = Path(settings.data_dir).expanduser() / "schedules.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _scheduler(settings, persistent: bool = True):
    from apscheduler.jobstores.memory import MemoryJobStore
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    stores = {MEMORY: MemoryJobStore()}
    if persistent:
        stores[JOBSTORE] = SQLAlchemyJobStore(url=schedules_url(settings))
    return BackgroundScheduler(
        jobstores=stores,
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": MISFIRE_GRACE_SECONDS},
        timezone=(settings.training or {}).get("timezone") or None,
    )


class _Paused:
    """A scheduler started paused, to read or change the persisted schedules without running anything."""

    def __init__(self, settings):
        self.scheduler = _scheduler(settings)

    def __enter__(self):
        self.scheduler.start(paused=True)
        return self.scheduler

    def __exit__(self, *exc):
        self.scheduler.shutdown(wait=False)


def cron_trigger(cron: str, settings=None):
    """An APScheduler CronTrigger from a 5-field crontab line, or a clear error."""
    from apscheduler.triggers.cron import CronTrigger

    try:
        return CronTrigger.from_crontab(cron, timezone=((settings.training or {}).get("timezone") if settings else None)
                                        or None)
    except (ValueError, TypeError) as error:
        raise ScheduleError(f"--cron {cron!r} is not a crontab line ({error}); use 5 fields: minute hour "
                            "day-of-month month day-of-week, e.g. \"0 3 * * *\" for every night at 03:00") from None


def add_schedule(settings, character: str, cron: str, method: str = "lora", min_new_turns: int = 50,
                 preference: str = "") -> dict:
    """Add (or replace) a character's retraining schedule; it persists across restarts."""
    if method not in METHODS:
        raise ScheduleError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    try:
        TrainingConfig(method=method, preference=preference or "")
    except PersonaeError as error:
        raise ScheduleError(str(error)) from None
    if min_new_turns < 0:
        raise ScheduleError("--min-new-turns must be 0 or more")
    trigger = cron_trigger(cron, settings)
    with _Paused(settings) as scheduler:
        scheduler.add_job(
            "runtime.jobs:scheduled_retrain", trigger, id=JOB_PREFIX + character, jobstore=JOBSTORE,
            name=f"retrain {character}", replace_existing=True,
            kwargs={"character": character, "method": method, "min_new_turns": int(min_new_turns), "cron": cron,
                    **({"preference": preference} if preference else {})},
        )
    return next(s for s in list_schedules(settings) if s["character"] == character)


def list_schedules(settings) -> list[dict]:
    """Every persisted retraining schedule with its next run time."""
    with _Paused(settings) as scheduler:
        jobs = scheduler.get_jobs(jobstore=JOBSTORE)
        return [{
            "character": job.kwargs.get("character"), "cron": job.kwargs.get("cron"),
            "method": job.kwargs.get("method"), "min_new_turns": job.kwargs.get("min_new_turns"),
            "preference": job.kwargs.get("preference", ""),
            # A paused scheduler reports no next run; the trigger knows it.
            "next_run": job.trigger.get_next_fire_time(None, datetime.now(timezone.utc)),
        } for job in sorted(jobs, key=lambda j: j.id) if job.id.startswith(JOB_PREFIX)]


def remove_schedule(settings, character: str) -> None:
    """Remove a character's schedule (ScheduleError when it has none)."""
    from apscheduler.jobstores.base import JobLookupError

    with _Paused(settings) as scheduler:
        try:
            scheduler.remove_job(JOB_PREFIX + character, jobstore=JOBSTORE)
        except JobLookupError:
            raise ScheduleError(f"{character} has no schedule (see `personae schedule list`)") from None


def scheduled_retrain(character: str, method: str = "lora", min_new_turns: int = 50, cron: str = "",
                      engine=None, force: bool = False, preference: str = ""):
    """The job a schedule runs: retrain in a low-priority subprocess, then gate and promote here."""
    engine = engine or _engines.get("current")
    if engine is None:
        log.warning("retrain %s: no engine in this process (start_scheduler was not called); skipped", character)
        return None
    try:
        config = TrainingConfig.from_sources(engine.settings.training, method=method, preference=preference or None)
    except PersonaeError as error:
        log.error("retrain %s: %s", character, error)
        return RetrainOutcome(character, "failed", str(error))
    try:
        outcome = retrain(engine, character, config=config, min_new_turns=0 if force else min_new_turns,
                          trigger="run-now" if force else "schedule", in_subprocess=True, progress=False)
    except TrainingBusy as error:
        log.info("retrain %s skipped: %s", character, error)

        return RetrainOutcome(character, "skipped", str(error))
    log.info("scheduled retrain: %s", outcome.summary())
    return outcome


def _refresh(scheduler) -> None:
    """Wake the scheduler so schedules added by other processes (the CLI) are picked up."""
    scheduler.wakeup()


def _sweep_training(engine) -> None:
    """Staging folders and 'running' rows of runs whose process died (killed server, power cut)."""
    from runtime.training.runs import sweep_stale

    try:
        swept = sweep_stale(engine.settings, engine.store)
    except OSError as error:  # a read-only data dir must not stop the server
        log.warning("could not sweep stale training leftovers: %s", error)
        return
    if swept:
        log.info("swept leftovers of interrupted training runs: %s", ", ".join(swept))


def start_scheduler(engine, persistent: bool = True):
    """Start the background scheduler of a serving process: persisted schedules and plugins' jobs."""
    from apscheduler.triggers.interval import IntervalTrigger

    settings = engine.settings
    _sweep_training(engine)
    scheduler = _scheduler(settings, persistent)
    _engines["current"] = engine
    registered = []

    def register(name, function, trigger):
        scheduler.add_job(function, trigger, args=[engine], id=f"plugin:{name}", name=name, jobstore=MEMORY,
                          replace_existing=True)
        registered.append(name)

    engine.pm.hook.register_jobs(register=register)
    if persistent:
        # Promotions made by other processes need no watcher here: WeightsManager.acquire() reads the
        # registry's active version on every request.
        scheduler.add_job(_refresh, IntervalTrigger(seconds=REFRESH_SECONDS), args=[scheduler],
                          id="personae:refresh", jobstore=MEMORY)
    scheduler.start()
    _schedulers[id(engine)] = scheduler
    if registered:
        log.info("plugin jobs: %s", ", ".join(registered))
    return scheduler


def run_now(engine, character: str, method: str | None = None, *, force: bool = False, timeout: float | None = None):
    """Run a character's retraining now through the scheduler (its schedule's settings, if it has one); wait."""
    character = engine.catalog.resolve(character)
    scheduler = _schedulers.get(id(engine))
    if scheduler is None or not scheduler.running:
        scheduler = start_scheduler(engine, persistent=False)
    schedule = None
    try:
        schedule = next((s for s in list_schedules(engine.settings) if s["character"] == character), None)
    except Exception:  # noqa: BLE001 - no schedule store yet
        pass
    kwargs = {
        "character": character,
        "method": method or (schedule or {}).get("method") or (engine.settings.training or {}).get("method", "lora"),
        "min_new_turns": (schedule or {}).get("min_new_turns") or 0,
        "preference": "" if method else (schedule or {}).get("preference", ""),
        "engine": engine, "force": force,
    }
    done, box = threading.Event(), {}

    def job():
        try:
            box["outcome"] = scheduled_retrain(**kwargs)
        except BaseException as error:  # noqa: BLE001 - handed back to the caller
            box["error"] = error
        finally:
            done.set()

    scheduler.add_job(job, "date", run_date=datetime.now(timezone.utc), id=f"run-now:{character}:{uuid.uuid4().hex[:6]}",
                      jobstore=MEMORY, misfire_grace_time=None)
    if not done.wait(timeout):
        raise TimeoutError(f"retraining {character} did not finish within {timeout} s; it continues in the background")
    if "error" in box:
        raise box["error"]
    return box["outcome"]

"""Built-in audit plugin: the built-in scorers and the scheduled live audit."""

from __future__ import annotations

from runtime.hookspecs import hookimpl

LIVE_AUDIT_HOURS = 6


@hookimpl
def register_scorers(register):
    """The built-in scorers: base-model leakage, the card's rules, voice closeness, facts against the card, optional judge."""
    from runtime.audit.scorers import BUILTIN_SCORERS

    for name, scorer in BUILTIN_SCORERS.items():
        register(name, scorer)


@hookimpl
def register_jobs(register):
    """Every few hours, score a sample of each character's recent real replies."""
    from apscheduler.triggers.interval import IntervalTrigger

    from runtime.audit.live import job

    register("audit-live", job, IntervalTrigger(hours=LIVE_AUDIT_HOURS))

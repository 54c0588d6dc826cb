"""Live audits: score a sample of each character's recent real replies; alert under a threshold."""

from __future__ import annotations

import logging
import random
import time

from runtime.audit.runner import AUDIT_PLATFORM, AuditReport, build_context, score_replies, summarise
from runtime.audit.store import AuditStore
from runtime.store import now

log = logging.getLogger(__name__)


def recent_replies(store, character: str, sample: int, since_id: int = 0) -> list[dict]:
    """A random sample of a character's recent real replies (not audits) with the message they answer."""
    rows = store.query(
        "select r.id, r.text as reply, u.text as prompt, r.created from messages r "
        "join messages u on u.id = r.reply_to where r.role = 'assistant' and r.character = ? "
        "and coalesce(r.platform, '') != ? and r.id > ? order by r.id desc limit ?",
        [character, AUDIT_PLATFORM, since_id, sample * 4],
    )
    random.Random(len(rows)).shuffle(rows)  # a sample across the window, same for the same log
    return rows[:sample]


def live_audit(engine, sample: int | None = None, threshold: float | None = None) -> list[AuditReport]:
    """Score recent real replies of every character; under the threshold, warn and call audit_alert."""
    config = engine.settings.audit or {}
    sample = int(sample or config.get("live_sample", 50))
    threshold = float(threshold if threshold is not None else config.get("live_threshold", 0.7))
    audits = AuditStore(engine.store)

    reports = []
    for character in engine.catalog.characters.values():
        last = audits.runs(character.id, kind="live", limit=1)
        since = int(last[-1]["meta"].get("last_message_id", 0)) if last else 0
        rows = recent_replies(engine.store, character.id, sample, since)
        if not rows:
            continue
        clock, started = time.perf_counter(), now()
        context = build_context(engine, character)
        scored = score_replies(character, rows, context=context, pm=engine.pm)
        verdicts = [{"probe_id": "live", "probe_kind": "live", "turn": 1, "prompt": row["prompt"], "reply": row["reply"],
                     "message_id": row["id"], **result} for row, result in zip(rows, scored)]
        numbers = summarise(verdicts)
        report = AuditReport(run_id=audits.new_run_id(), character=character.id, version="live", verdicts=verdicts,
                             seconds=time.perf_counter() - clock, kind="live", **numbers)
        audits.save_report(report, started, 0, {"last_message_id": max(row["id"] for row in rows),
                                                 "threshold": threshold})
        if report.aligned < threshold:
            log.warning("live audit: %s is %.0f%% aligned over %d recent replies (threshold %.0f%%)",
                        character.id, 100 * report.aligned, len(verdicts), 100 * threshold)
            engine.pm.hook.audit_alert(character=character, report=report)
        reports.append(report)
    return reports


def job(engine) -> None:
    """The scheduled job: a live audit of every character (errors are logged, not raised)."""
    try:
        live_audit(engine)
    except Exception:
        log.exception("live audit failed")

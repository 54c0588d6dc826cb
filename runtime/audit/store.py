"""Audit runs and verdicts in SQLite, through the audit's own named migrations."""

from __future__ import annotations

import json
import uuid

import sqlite_utils

from runtime.store import now

migrations = sqlite_utils.Migrations("personae.audit")


@migrations(name="m001_runs_and_verdicts")
def m001_runs_and_verdicts(db: sqlite_utils.Database) -> None:
    """One row per audit run, one per scored reply, and the bare base model's cached answers."""
    db["audit_runs"].create(
        {
            "id": str, "character": str, "version": str, "kind": str,  # kind: probe | live | score
            "started": str, "finished": str, "probes": int, "replies": int,
            "aligned": float, "minor": float, "misaligned": float, "leakage": float,
            "by_turn": str, "seconds": float, "report": str, "meta": str,
        },
        pk="id",
    )
    db["audit_runs"].create_index(["character", "started"])
    db["audit_verdicts"].create(
        {
            "id": int, "run_id": str, "probe_id": str, "probe_kind": str, "turn": int, "prompt": str,
            "reply": str, "verdict": str, "reasons": str, "leakage": int, "closeness": float,
            "message_id": int, "scores": str,
        },
        pk="id",
        foreign_keys=[("run_id", "audit_runs", "id")],
    )
    db["audit_verdicts"].create_index(["run_id"])
    db["audit_base_answers"].create(
        {"fingerprint": str, "question": str, "answer": str, "created": str}, pk=("fingerprint", "question")
    )


class AuditStore:
    """Reads and writes the audit tables of the runtime's store."""

    def __init__(self, store):
        self.store = store
        store.apply_migrations(migrations)

    def new_run_id(self) -> str:
        """A sortable, unique run id."""
        return now().replace(":", "").replace("-", "").replace(".", "")[:18] + "-" + uuid.uuid4().hex[:6]

    def save_report(self, report, started: str, probes: int, meta: dict) -> None:
        """Store a finished AuditReport (its numbers and verdicts) with when it started and its meta."""
        run = {"id": report.run_id, "character": report.character, "version": report.version, "kind": report.kind,
               "started": started, "finished": now(), "probes": probes, "replies": len(report.verdicts),
               "aligned": report.aligned, "minor": report.minor, "misaligned": report.misaligned,
               "leakage": report.leakage, "by_turn": report.by_turn, "seconds": round(report.seconds, 2), "meta": meta}
        self.save_run(run, report.verdicts)

    def save_run(self, run: dict, verdicts: list[dict]) -> None:
        """Store a finished run and every verdict in one transaction."""
        row = dict(run)
        for key in ("by_turn", "meta"):
            if not isinstance(row.get(key), str):
                row[key] = json.dumps(row.get(key) or ([] if key == "by_turn" else {}))
        rows = []
        for v in verdicts:
            rows.append({
                "run_id": run["id"], "probe_id": v.get("probe_id"), "probe_kind": v.get("probe_kind"),
                "turn": v.get("turn"), "prompt": v.get("prompt"), "reply": (v.get("reply") or "")[:20000],
                "verdict": v["verdict"], "reasons": json.dumps(v.get("reasons", [])), "leakage": int(bool(v.get("leakage"))),
                "closeness": v.get("closeness"), "message_id": v.get("message_id"),
                "scores": json.dumps(v.get("scores", {}), default=str),
            })

        def write():
            self.store.db["audit_runs"].insert(row, replace=True)
            if rows:
                self.store.db["audit_verdicts"].insert_all(rows)

        self.store.write(write)

    def set_report(self, run_id: str, path: str) -> None:
        """Remember where a run's HTML report is."""
        self.store.write(lambda: self.store.db["audit_runs"].update(run_id, {"report": path}))

    def runs(self, character: str | None = None, kind: str | None = None, limit: int = 100) -> list[dict]:
        """Runs, oldest first (the newest `limit`)."""
        where, params = [], []
        if character:
            where.append("character = ?")
            params.append(character)
        if kind:
            where.append("kind = ?")
            params.append(kind)
        clause = ("where " + " and ".join(where)) if where else ""
        rows = self.store.query(f"select * from audit_runs {clause} order by started desc, id desc limit ?", [*params, limit])
        for row in rows:
            row["by_turn"] = json.loads(row["by_turn"] or "[]")
            row["meta"] = json.loads(row["meta"] or "{}")
        return rows[::-1]

    def verdicts(self, run_id: str) -> list[dict]:
        """Every verdict of a run."""
        rows = self.store.query("select * from audit_verdicts where run_id = ? order by id", [run_id])
        for row in rows:
            row["reasons"] = json.loads(row["reasons"] or "[]")
            row["scores"] = json.loads(row["scores"] or "{}")
        return rows

    def base_answers(self, fingerprint: str) -> dict:
        """The bare base model's cached answers, by question."""
        rows = self.store.query("select question, answer from audit_base_answers where fingerprint = ?", [fingerprint])
        return {row["question"]: row["answer"] for row in rows}

    def save_base_answers(self, fingerprint: str, answers: dict) -> None:
        """Cache the bare base model's answers (they only change with the base)."""
        rows = [{"fingerprint": fingerprint, "question": q, "answer": a, "created": now()} for q, a in answers.items()]
        if rows:
            self.store.write(lambda: self.store.db["audit_base_answers"].insert_all(rows, replace=True))

"""Persona audits: probes, scorers, verdicts, reports, the retraining gate, live audits."""

from __future__ import annotations

from runtime.audit.report import latest_report_files
from runtime.audit.runner import AuditReport, GateDecision, gate, run_audit, score_replies

__all__ = ["AuditReport", "GateDecision", "gate", "latest_report_files", "run_audit", "score_replies"]

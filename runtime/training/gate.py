"""The promotion gate: a persona audit of candidate vs active, or validation loss when asked for."""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime.audit.runner import gate as audit_gate


@dataclass
class GateResult:
    """Whether a candidate replaces the active version, and why."""

    promote: bool
    reasons: list[str]
    method: str  # "audit" | "validation loss"
    details: dict = field(default_factory=dict)


def loss_gate(metrics: dict, tolerance: float) -> GateResult:
    """Promote when the candidate's validation loss is no worse than the active version's (+ tolerance)."""
    candidate, reference = metrics.get("val_loss"), metrics.get("reference_val_loss")
    against = metrics.get("reference", "base")
    if candidate is None or reference is None:
        return GateResult(False, ["no validation loss to compare (the run recorded none)"], "validation loss")
    limit = reference * (1 + tolerance)
    details = {"candidate_val_loss": candidate, "reference_val_loss": reference, "reference": against,
               "tolerance": tolerance}
    if candidate <= limit:
        return GateResult(True, [f"validation loss {candidate:.4f} <= {against} {reference:.4f} "
                                 f"(+{tolerance:.0%} tolerance)"], "validation loss", details)
    return GateResult(False, [f"validation loss {candidate:.4f} is worse than {against} {reference:.4f} "
                              f"(+{tolerance:.0%} tolerance allows {limit:.4f})"], "validation loss", details)


def run_gate(engine, character_id: str, candidate, active, metrics: dict, config) -> GateResult:
    """Decide on a candidate Version: a persona audit of candidate against active, or validation loss (gate = "loss")."""
    if getattr(config, "gate", "auto") == "loss":
        return loss_gate(metrics, config.gate_tolerance)
    try:
        # Thresholds come from the [audit] table (gate_alignment_tolerance, gate_leakage_tolerance, gate_probes).
        decision = audit_gate(engine, character_id, candidate.number, active.number if active else None)
    except Exception as error:  # an audit that cannot run must not promote anything
        return GateResult(False, [f"the persona audit failed ({type(error).__name__}: {error}); not promoted"], "audit")
    details = {}
    for side in ("candidate", "active"):
        report = getattr(decision, side, None)
        if report is not None:
            details[side] = {k: getattr(report, k, None) for k in ("aligned", "minor", "misaligned", "leakage")}
    return GateResult(bool(decision.promote), list(decision.reasons), "audit", details)

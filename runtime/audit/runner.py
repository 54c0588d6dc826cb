"""Run an audit: probes through the engine (batched), every reply scored, the run stored."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from runtime.audit.probes import Probe, character_probes, probe_set
from runtime.audit.report import write_report
from runtime.audit.scorers import BaseIdentity, ScoringContext, collect_scorers, other_voices
from runtime.audit.store import AuditStore
from runtime.audit.verdicts import ALIGNED, MINOR_VERDICT, MISALIGNED, score_reply
from runtime.chat.engine import Turn
from runtime.errors import PersonaeError
from runtime.generation.types import BASE_ADAPTER, GeneratorBusy, Request, SamplingSettings
from runtime.refs import WeightsRef
from runtime.store import now

log = logging.getLogger(__name__)

AUDIT_PLATFORM = "audit"  # curation leaves these conversations out of training data
AUDIT_USER = "personae-audit"


class AuditError(PersonaeError, ValueError):
    """An audit that cannot start (a pinned version that does not load); the message says why."""


@dataclass
class AuditReport:
    """The outcome of one audit run (fractions are 0..1)."""

    run_id: str
    character: str
    version: str
    aligned: float = 0.0
    minor: float = 0.0
    misaligned: float = 0.0
    leakage: float = 0.0
    by_turn: list = field(default_factory=list)
    verdicts: list = field(default_factory=list)
    report_html: Path | None = None
    seconds: float = 0.0
    kind: str = "probe"
    tokens_per_s: float | None = None  # serving speed measured while the probes were answered
    phases: dict = field(default_factory=dict)  # seconds: base answers, answering, scoring, report

    def summary(self) -> dict:
        """The headline numbers, as stored in the registry's manifest."""
        return {"run_id": self.run_id, "aligned": round(self.aligned, 4), "minor": round(self.minor, 4),
                "misaligned": round(self.misaligned, 4), "leakage": round(self.leakage, 4),
                "replies": len(self.verdicts)}


def summarise(verdicts: list[dict]) -> dict:
    """Shares of each verdict and of leakage, and alignment by turn index."""
    total = len(verdicts) or 1
    share = lambda name: sum(1 for v in verdicts if v["verdict"] == name) / total  # noqa: E731
    turns: dict[int, list] = {}
    for v in verdicts:
        turns.setdefault(int(v.get("turn") or 1), []).append(v)
    by_turn = [
        {"turn": t, "replies": len(vs), "aligned": sum(1 for v in vs if v["verdict"] == ALIGNED) / len(vs),
         "misaligned": sum(1 for v in vs if v["verdict"] == MISALIGNED) / len(vs)}
        for t, vs in sorted(turns.items())
    ]
    return {"aligned": share(ALIGNED), "minor": share(MINOR_VERDICT), "misaligned": share(MISALIGNED),
            "leakage": sum(1 for v in verdicts if v.get("leakage")) / total, "by_turn": by_turn}


def audit_config(settings) -> dict:
    """The [audit] table with defaults filled in."""
    config = {"temperature": 0.0, "max_new_tokens": 96, "base_max_new_tokens": 64, "concurrency": 16}
    config.update(getattr(settings, "audit", None) or {})
    return config


def build_context(engine, character, base_answers: dict | None = None) -> ScoringContext:
    """The scoring context of a character on this engine's base model."""
    identity = BaseIdentity()
    base = engine.base_loaded
    if base is not None:
        identity = BaseIdentity.from_tokenizer(base.tokenizer)
    return ScoringContext(character=character, base=identity, base_answers=dict(base_answers or {}),
                          config=audit_config(engine.settings),
                          others=other_voices(engine.catalog.characters.values(), character))


def _submit(generator, request):
    """Submit to the generator, waiting politely while its queue is full."""
    while True:
        try:
            return generator.submit(request)
        except GeneratorBusy as busy:
            time.sleep(min(busy.retry_after, 2))


def base_answers(engine, questions: list[str], audits: AuditStore) -> dict:
    """The bare base model's own answers (its default system persona, no adapter), cached per base."""
    base = engine.base
    cached = audits.base_answers(base.fingerprint)
    missing = [q for q in dict.fromkeys(questions) if q not in cached]
    if missing:
        config = audit_config(engine.settings)
        sampling = SamplingSettings(temperature=0.0, max_new_tokens=int(config["base_max_new_tokens"]),
                                    repetition_penalty=engine.settings.repetition_penalty)
        streams = {}
        for question in missing:  # all queued at once so the generator can batch them
            ids = list(base.tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                                          add_generation_prompt=True, tokenize=True, return_dict=False))
            streams[question] = _submit(engine.generator, Request(ids, sampling, BASE_ADAPTER))
        fresh = {}
        for question, stream in streams.items():
            try:
                fresh[question] = stream.result().strip()
            except Exception as error:  # one failed answer only weakens the overlap check
                log.warning("base answer to %r failed: %s", question, error)
        audits.save_base_answers(base.fingerprint, fresh)
        cached.update(fresh)
    return {q: cached[q] for q in questions if q in cached}


def _ask(engine, character, probe: Probe, run_id: str, version, sampling: dict, tick) -> list[dict]:
    """One probe conversation through the engine; its own channel so histories don't mix."""
    channel = f"{run_id}/{probe.id}"
    answers = []
    for index, text in enumerate(probe.turns, 1):
        turn = Turn(platform=AUDIT_PLATFORM, channel=channel, user_id=AUDIT_USER, user_name="User", text=text,
                    character=character, sampling=dict(sampling), version=version)
        if index == 1:
            engine.log_greeting(turn, character)
        try:
            reply = engine.reply(turn)
            text_out = reply.result()
            message = reply.message or {}
        except Exception as error:  # an engine error is a finding, not a crash
            text_out, message = "", {"error": f"{type(error).__name__}: {error}"}
        answers.append({"probe": probe, "turn": index, "prompt": text, "reply": text_out,
                        "message_id": message.get("id"), "weights_version": message.get("weights_version"),
                        "tokens": message.get("completion_tokens") or 0, "error": message.get("error")})
        tick()
    return answers


def _progress(enabled: bool, total: int, label: str):
    """A rich progress bar (or a silent stand-in) and a thread-safe tick."""
    lock = threading.Lock()
    if not enabled:
        return None, (lambda: None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    task = progress.add_task(label, total=total)

    def tick():
        with lock:
            progress.advance(task)

    return progress, tick


def run_audit(engine, character_id: str, version=None, probes=None, progress: bool = True,
              limit: int | None = None, report: bool = True) -> AuditReport:
    """Ask the probes, score every reply, store the run and its verdicts, write the HTML report."""
    character = engine.catalog.get(character_id)
    audits = AuditStore(engine.store)
    # A registry Version, a number, "base", or a reference text ("3", "pixel@3"): parsed in one place.
    version = None if version in (None, "", "active") else \
        WeightsRef.parse(str(getattr(version, "number", version)), character=character.id).version
    probes = list(probes) if probes is not None else probe_set(character, limit=limit)
    if not probes:
        raise AuditError("no probes to ask: give a probe file with at least one good line, or drop --only-file")
    _check_version(engine, character, version)
    config = audit_config(engine.settings)
    sampling = {"temperature": float(config["temperature"]), "max_new_tokens": config.get("max_new_tokens")}
    run_id = audits.new_run_id()
    started, clock = time.time(), time.perf_counter()

    started_at = now()
    total = sum(len(p.turns) for p in probes)
    # Audit turns must never become training data: the audit "user" has opted out of training.
    engine.store.ensure_user(AUDIT_USER, "Persona audit", AUDIT_PLATFORM)
    engine.store.set_opt_out(AUDIT_USER, True)
    bar, tick = _progress(progress, total, f"auditing {character.id}")
    workers = max(1, min(len(probes) or 1, int(config["concurrency"]), max(1, engine.settings.max_queue // 2)))
    try:
        if bar:
            bar.start()
        answers_base = base_answers(engine, [p.question for p in probes], audits)
        asked = time.perf_counter()
        phases = {"base_answers": round(asked - clock, 2)}
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="audit") as pool:
            # Long conversations start first: their turns are sequential, so they set the audit's length.
            ordered = sorted(range(len(probes)), key=lambda i: -len(probes[i].turns))
            futures = {i: pool.submit(_ask, engine, character, probes[i], run_id, version, sampling, tick)
                       for i in ordered}
            answers = [answer for i in range(len(probes)) for answer in futures[i].result()]
        answering = time.perf_counter() - asked
        phases["answering"] = round(answering, 2)
    finally:
        if bar:
            bar.stop()
    context = build_context(engine, character, answers_base)
    scorers = collect_scorers(engine.pm)
    context.prepare([a["reply"] for a in answers])
    verdicts = []
    for answer in answers:
        probe = answer["probe"]
        scored_probe = probe if answer["turn"] == 1 else Probe(probe.id, probe.kind, [answer["prompt"]])
        result = score_reply(answer["reply"], scored_probe, context, scorers)
        if answer.get("error"):
            result["reasons"].insert(0, f"the engine failed: {answer['error']}")
        verdicts.append({"probe_id": probe.id, "probe_kind": probe.kind, "turn": answer["turn"],
                         "prompt": answer["prompt"], "reply": answer["reply"], "message_id": answer["message_id"],
                         **result})
    phases["scoring"] = round(time.perf_counter() - clock - phases["base_answers"] - phases["answering"], 2)
    used = next((a["weights_version"] for a in answers if a.get("weights_version")), None)
    label = used or (version if version else "base")
    numbers = summarise(verdicts)
    tokens = sum(a["tokens"] for a in answers)
    result = AuditReport(run_id=run_id, character=character.id, version=label, verdicts=verdicts,
                         seconds=time.perf_counter() - clock,
                         tokens_per_s=round(tokens / answering, 2) if answering > 0 else None, phases=phases,
                         **numbers)
    audits.save_report(result, started_at, len(probes),
                       {"requested_version": version, "started_epoch": started, "scorers": sorted(scorers),
                        "tokens_per_s": result.tokens_per_s, "phases": phases, "tokens": tokens})
    _record_in_registry(engine, character.id, version, result)
    if report:
        writing = time.perf_counter()
        result.report_html = write_report(engine.settings, audits, result)
        audits.set_report(run_id, str(result.report_html))
        phases["report"] = round(time.perf_counter() - writing, 2)
    result.seconds = time.perf_counter() - clock
    return result


def _check_version(engine, character, version) -> None:
    """Fail before asking anything when a pinned version cannot be served."""
    if version is None or engine.weights is None:
        return
    try:
        engine.weights_for(character, version).release()
    except PersonaeError as error:
        raise AuditError(f"{character.id}: version {version!r} cannot be audited ({error}); "
                         f"see `personae adapters list`") from None


def _record_in_registry(engine, character_id: str, version, result: AuditReport) -> None:
    """Put the scores in the registry manifest of the audited version, when there is a registry."""
    registry = engine.registry
    if registry is None or not isinstance(version, int):
        return
    try:
        registry.set_audit(character_id, version, result.summary())
    except Exception as error:  # the audit stands on its own; the manifest is a convenience
        log.warning("could not record the audit in the registry: %s", error)


def score_replies(character, items: list, context: ScoringContext | None = None, pm=None,
                  base: BaseIdentity | None = None, others=()) -> list[dict]:
    """Score replies made anywhere: items of {"prompt", "reply", "turn"?}; one result per item.

    `others` are the catalog's other characters: the voice check asks whether a reply is closer to one of them.
    """
    context = context or ScoringContext(character=character, base=base or BaseIdentity(),
                                        others=other_voices(others, character))
    scorers = collect_scorers(pm)
    card = {p.question.strip().lower(): p for p in character_probes(character)}
    context.prepare([item.get("reply") for item in items if isinstance(item, dict)])
    results = []
    for item in items:
        if not isinstance(item, dict):
            results.append({"verdict": MISALIGNED, "reasons": ["item is not a JSON object"], "leakage": False})
            continue
        prompt = item.get("prompt") if isinstance(item.get("prompt"), str) else ""
        turn = item.get("turn") if isinstance(item.get("turn"), int) else 1
        known = card.get(prompt.strip().lower()) if turn == 1 else None
        probe = Probe("scored", known.kind if known else "style", [prompt or " "],
                      must=known.must if known else [], must_not=known.must_not if known else [])
        outcome = score_reply(item.get("reply"), probe, context, scorers)
        outcome["turn"] = turn
        results.append(outcome)
    return results


# --- the retraining gate ----------------------------------------------------------------------


@dataclass
class GateDecision:
    """Whether a candidate version may replace the active one, and why."""

    promote: bool
    reasons: list
    candidate: AuditReport
    active: AuditReport


def gate_thresholds(settings, overrides: dict | None = None) -> dict:
    """How much worse a candidate may be: [audit] gate_* settings, then explicit overrides."""
    config = audit_config(settings)
    thresholds = {
        "alignment_tolerance": float(config.get("gate_alignment_tolerance", 0.0)),
        "leakage_tolerance": float(config.get("gate_leakage_tolerance", 0.0)),
        "min_aligned": float(config.get("gate_min_aligned", 0.0)),
        "probes": config.get("gate_probes"),
    }
    thresholds.update(overrides or {})
    return thresholds


def decide(candidate: AuditReport, active: AuditReport, thresholds: dict) -> tuple[bool, list[str]]:
    """Promote only if alignment is not lower and leakage is not higher (within the tolerances)."""
    reasons, promote = [], True
    if candidate.aligned + thresholds["alignment_tolerance"] < active.aligned:
        promote = False
        reasons.append(f"alignment fell: {candidate.aligned:.0%} against {active.aligned:.0%} for the active version")
    else:
        reasons.append(f"alignment {candidate.aligned:.0%} (active {active.aligned:.0%})")
    if candidate.leakage > active.leakage + thresholds["leakage_tolerance"]:
        promote = False
        reasons.append(f"leakage rose: {candidate.leakage:.0%} against {active.leakage:.0%}")
    else:
        reasons.append(f"leakage {candidate.leakage:.0%} (active {active.leakage:.0%})")
    if candidate.aligned < thresholds["min_aligned"]:
        promote = False
        reasons.append(f"alignment {candidate.aligned:.0%} is under the floor of {thresholds['min_aligned']:.0%}")
    return promote, reasons


def gate(engine, character_id: str, candidate_version, active_version=None, thresholds=None,
         progress: bool = False, probes=None) -> GateDecision:
    """Audit candidate and active on the same probes and decide whether the candidate goes live."""
    limits = gate_thresholds(engine.settings, thresholds)
    character = engine.catalog.get(character_id)
    if probes is None:
        limit = limits.get("probes")
        probes = probe_set(character, limit=int(limit) if limit else None)
    candidate = run_audit(engine, character_id, candidate_version, probes=probes, progress=progress)
    active = run_audit(engine, character_id, active_version, probes=probes, progress=progress)
    promote, reasons = decide(candidate, active, limits)
    return GateDecision(promote=promote, reasons=reasons, candidate=candidate, active=active)

"""`personae bootstrap`: in-character training dialogues from the card alone, by rejection sampling.

Each user turn of the bank (runtime.training.bootstrap_bank) is answered several times by the
prompted character (prompt-only: the card, no weights), all rows of a round submitted at once so
the generator batches them, plus the teacher's reply when `[training] teacher_url` is set; the
audit screens every candidate (runtime.training.screen) and the best aligned one is kept. The
dialogues are stored in the `bootstrap_dialogues` table, apart from the users' logs, and curation
mixes them in as a source of their own.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field, replace

from runtime.audit.runner import build_context
from runtime.audit.scorers import collect_scorers
from runtime.characters.prompt import build_messages
from runtime.generation.types import BASE_ADAPTER, GeneratorBusy, Request, SamplingSettings
from runtime.store import now
from runtime.training.bootstrap_bank import bank
from runtime.training.bootstrap_store import TABLE, ensure_table
from runtime.training.screen import SCREEN_RULES, screen
from runtime.training.teacher import Teacher

log = logging.getLogger(__name__)

ACCEPTED = ("aligned",)  # verdicts a kept reply may have


@dataclass
class BootstrapResult:
    """What one bootstrap run asked, sampled, kept and rejected (by rule)."""

    character: str
    run_id: str
    threads: int = 0
    dialogues: int = 0  # stored dialogues (threads with at least one kept reply)
    turns_asked: int = 0
    turns_kept: int = 0
    sampled: int = 0
    teacher_replies: int = 0
    teacher_kept: int = 0
    rejected: dict = field(default_factory=dict)
    seconds: float = 0.0


def _submit(generator, request):
    while True:  # a full queue drains on its own: wait for a slot rather than fail the run
        try:
            return generator.submit(request)
        except GeneratorBusy as busy:
            time.sleep(min(busy.retry_after, 1))


def _finish(text: str, reason: str | None) -> str:
    """A reply cut off by the token limit ends at its last full sentence (or is dropped: empty)."""
    text = (text or "").strip()
    if reason != "length":
        return text
    ends = [m.end() for m in re.finditer(r"[.!?…](?=\s|$)|\*(?=\s|$)", text)]
    return text[:ends[-1]].strip() if ends and ends[-1] > len(text) // 3 else ""


def bootstrap(engine, character_id: str, *, limit: int | None = None, samples: int = 4, temperature: float = 0.9,
              max_new_tokens: int = 96, seed: int = 0, replace_old: bool = True, progress: bool = True,
              user: str = "User") -> BootstrapResult:
    """Write and store in-character dialogues for a character from its card (see the module docstring)."""
    character = engine.catalog.get(character_id)
    store, tokenizer = engine.store, engine.base.tokenizer
    threads = bank(character, limit, seed)
    result = BootstrapResult(character.id, os.urandom(4).hex(), threads=len(threads))
    rejected = Counter({rule: 0 for rule in (*SCREEN_RULES, "minor", "empty")})
    teacher = Teacher.from_settings(engine.settings)
    context, scorers = build_context(engine, character), collect_scorers(engine.pm)
    sampling = SamplingSettings.from_sources(engine.settings, character, temperature=temperature,
                                             max_new_tokens=max_new_tokens)
    sampling.stop = [*sampling.stop, f"\n{user}:"]
    budget = min(engine.settings.context_tokens, engine.base.context_length) - max_new_tokens
    states = [{"thread": t, "messages": [], "sources": [], "verdicts": [], "rejected": [], "open": True}
              for t in threads]
    clock = time.perf_counter()
    bar, task = _progress(progress, sum(len(t.turns) for t in threads), f"bootstrapping {character.id}")
    try:
        for round_index in range(max((len(t.turns) for t in threads), default=0)):
            asking = [s for s in states if s["open"] and round_index < len(s["thread"].turns)]
            pending = []
            for number, state in enumerate(asking):  # every row of the round queued before any is read
                history = state["messages"] + [{"role": "user", "content": state["thread"].turns[round_index]}]
                messages = build_messages(character, history, tokenizer, budget, user=user, seed=seed)
                ids = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                         return_dict=False))
                streams = [_submit(engine.generator, Request(ids, replace(
                    sampling, seed=seed * 1_000_003 + round_index * 10_007 + number * samples + k + 1), BASE_ADAPTER))
                    for k in range(samples)]
                pending.append((state, history, messages, streams))
            for state, history, messages, streams in pending:
                candidates = [(_finish(_text(s), s.finish_reason), "model") for s in streams]
                if teacher is not None:
                    answer = teacher.reply(messages, temperature, max_new_tokens, seed)
                    if answer and answer.strip():
                        candidates.append((answer.strip(), "teacher"))
                        result.teacher_replies += 1
                result.sampled += len(candidates)
                result.turns_asked += 1
                best = _choose(candidates, history[-1]["content"], state["thread"].kind, context, scorers, rejected)
                if best is None:
                    state["open"] = False  # a thread stops at its first turn with no good reply
                else:
                    text, source, verdict, worst = best
                    state["messages"] = history + [{"role": "assistant", "content": text}]
                    state["rejected"].append(worst)
                    state["sources"].append(source)
                    state["verdicts"].append(verdict)
                    result.turns_kept += 1
                    result.teacher_kept += source == "teacher"
                if bar is not None:
                    bar.advance(task, len(state["thread"].turns) - round_index if best is None else 1)
    finally:
        if bar is not None:
            bar.stop()
    kept = [s for s in states if s["messages"]]
    ensure_table(store)

    def write():
        if replace_old:
            store.db.execute(f"delete from {TABLE} where character = ?", [character.id])
        store.db[TABLE].insert_all([
            {"character": character.id, "run_id": result.run_id, "kind": s["thread"].kind,
             "messages": json.dumps(s["messages"], ensure_ascii=False), "sources": json.dumps(s["sources"]),
             "verdicts": json.dumps(s["verdicts"]), "rejected": json.dumps(s["rejected"], ensure_ascii=False),
             "created": now()} for s in kept])

    store.write(write)
    result.dialogues, result.rejected = len(kept), dict(rejected)
    result.seconds = round(time.perf_counter() - clock, 2)
    return result


def _text(stream) -> str:
    """A finished stream's text; one that failed is an empty candidate, not a failed run."""
    try:
        return stream.result()
    except Exception as error:
        log.warning("a bootstrap reply failed: %s", error)
        return ""


def _choose(candidates, prompt, kind, context, scorers, rejected: Counter):
    """The best candidate the audit accepts, as (text, source, verdict, worst rejected text or None), or None.

    Rejections are counted by rule; the worst candidate (a rule broken, else the lowest aligned score) is
    kept as the rejected side of a DPO pair.
    """
    usable = [(text, source) for text, source in candidates if text.strip()]
    rejected["empty"] += len(candidates) - len(usable)
    if not usable:
        return None
    kinds = {"provocation": "injection", "off-topic": "out-of-character"}
    outcomes = screen([{"prompt": prompt, "reply": t, "kind": kinds.get(kind, "style")} for t, _ in usable],
                      context, scorers=scorers)
    ranked, turned_down = [], []
    for (text, source), outcome in zip(usable, outcomes):
        if outcome.rule:
            rejected[outcome.rule] += 1
            turned_down.append((0, outcome.p_aligned or 0.0, text))
        elif outcome.verdict not in ACCEPTED:
            rejected["minor"] += 1
            turned_down.append((1, outcome.p_aligned or 0.0, text))
        else:
            ranked.append((outcome.p_aligned, -len(text), text, source, outcome.verdict))
    if not ranked:
        return None
    _, _, text, source, verdict = max(ranked)
    worst = min(turned_down)[2] if turned_down else None
    return text, source, verdict, worst


def _progress(enabled: bool, total: int, label: str):
    """A started rich progress bar and its task (None, None when disabled)."""
    if not enabled:
        return None, None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    task = bar.add_task(label, total=total)
    bar.start()
    return bar, task

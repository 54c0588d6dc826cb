"""Written dialogues: hand-authored in-character conversations, imported as a bootstrap source.

A small base model cannot bootstrap itself from its card alone: its sampled replies drift into word
salad or one card line repeated (see the README's "Characters that learn"). An author's dialogues
are the teacher instead. They are screened by the same audit rules as sampled ones, never contain an
audit probe question, and are stored in `bootstrap_dialogues` (sources "written"), so curation,
preference pairs and retraining treat them like any other bootstrapped dialogue.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from runtime.errors import PersonaeError
from runtime.store import now
from runtime.training.bootstrap_bank import normalise_turn, probe_questions
from runtime.training.bootstrap_store import TABLE, ensure_table

MAX_FILE_BYTES = 20 * 1024 * 1024
MAX_DIALOGUES = 10_000
MAX_TEXT = 4_000  # characters per message: a training turn, not a document
SOURCE = "written"


class WrittenDialogueError(PersonaeError):
    """A written-dialogue file that cannot be imported; says which entry and what to fix."""


@dataclass
class WrittenImport:
    """What an import read, kept and dropped (by rule)."""

    character: str
    run_id: str
    read: int = 0
    dialogues: int = 0
    replies: int = 0
    dropped: dict = field(default_factory=dict)


def read_written(path: str | Path) -> list[dict]:
    """The dialogues of a JSON file ([{"kind"?, "messages": [user, assistant, ...]}]), validated."""
    path = Path(path)
    if not path.is_file():
        raise WrittenDialogueError(f"{path}: no such file; give a JSON list of dialogues")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise WrittenDialogueError(f"{path}: {path.stat().st_size:,} bytes is over the {MAX_FILE_BYTES:,}-byte "
                                   "limit; split it into several files")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise WrittenDialogueError(f"{path}: not valid UTF-8 JSON ({error}); fix the file") from None
    if not isinstance(data, list) or not data:
        raise WrittenDialogueError(f"{path}: expected a non-empty JSON list of dialogues")
    if len(data) > MAX_DIALOGUES:
        raise WrittenDialogueError(f"{path}: {len(data):,} dialogues is over the {MAX_DIALOGUES:,} limit")
    return [_checked(entry, f"{path.name} dialogue {number}") for number, entry in enumerate(data, 1)]


def _checked(entry, where: str) -> dict:
    """One dialogue, or WrittenDialogueError naming what is wrong with it."""
    messages = entry.get("messages") if isinstance(entry, dict) else None
    if not isinstance(messages, list) or len(messages) < 2:
        raise WrittenDialogueError(f"{where}: needs \"messages\": a list of at least one user and one assistant turn")
    for index, message in enumerate(messages):
        wanted = "user" if index % 2 == 0 else "assistant"
        if not isinstance(message, dict) or message.get("role") != wanted:
            raise WrittenDialogueError(f"{where}, message {index + 1}: expected role {wanted!r} (turns alternate, "
                                       "starting with the user)")
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            raise WrittenDialogueError(f"{where}, message {index + 1}: content must be non-empty text")
        if len(content) > MAX_TEXT:
            raise WrittenDialogueError(f"{where}, message {index + 1}: {len(content):,} characters is over the "
                                       f"{MAX_TEXT:,} limit for one turn")
    if messages[-1]["role"] != "assistant":
        raise WrittenDialogueError(f"{where}: must end with the character's (assistant) reply")
    kind = entry.get("kind", "written")
    return {"kind": kind if isinstance(kind, str) and kind.strip() else "written",
            "messages": [{"role": m["role"], "content": m["content"].strip()} for m in messages]}


def _without_probes(messages: list[dict], probes: set[str]) -> list[dict]:
    """The dialogue cut before its first audit probe question (weights are never trained on what judges them)."""
    for index, message in enumerate(messages):
        if message["role"] == "user" and normalise_turn(message["content"]) in probes:
            return messages[:index]
    return messages


def import_written(engine, character_id: str, path: str | Path, *, replace_old: bool = False,
                   drop: tuple | None = None) -> WrittenImport:
    """Screen and store a file of written dialogues for a character; dialogues are cut before a bad reply.

    `drop`: the screen's rules that cut (None: all of them); an author may trust their own lines' voice over the
    audit's (drop=("degenerate", "unsafe", "leakage")): a misaligned verdict is then recorded, not acted on.
    """
    from runtime.audit.runner import build_context
    from runtime.audit.scorers import collect_scorers
    from runtime.training.screen import SCREEN_RULES, screen

    character = engine.catalog.get(character_id)
    drop = SCREEN_RULES if drop is None else tuple(drop)
    dialogues = read_written(path)
    result = WrittenImport(character.id, os.urandom(4).hex(), read=len(dialogues))
    dropped = Counter()
    probes = probe_questions(character)
    kept = []
    for dialogue in dialogues:
        messages = _without_probes(dialogue["messages"], probes)
        if len(messages) < len(dialogue["messages"]):
            dropped["probe question"] += 1
        if len(messages) >= 2:
            kept.append({**dialogue, "messages": messages})
    pairs = [(d, i) for d in kept for i, m in enumerate(d["messages"]) if m["role"] == "assistant"]
    outcomes = screen([{"prompt": d["messages"][i - 1]["content"], "reply": d["messages"][i]["content"]}
                       for d, i in pairs], build_context(engine, character), scorers=collect_scorers(engine.pm))
    verdicts: dict[int, list[str]] = {}
    cuts: dict[int, int] = {}
    for (dialogue, index), outcome in zip(pairs, outcomes):
        key = id(dialogue)
        verdicts.setdefault(key, []).append(outcome.verdict)
        if outcome.rule in drop and index < cuts.get(key, len(dialogue["messages"])):
            cuts[key] = index
            dropped[outcome.rule] += 1
    rows = []
    for dialogue in kept:
        messages = dialogue["messages"][:max(0, cuts.get(id(dialogue), len(dialogue["messages"])) - 1)] \
            if id(dialogue) in cuts else dialogue["messages"]
        if len(messages) < 2:
            continue
        answers = sum(1 for m in messages if m["role"] == "assistant")
        rows.append({"character": character.id, "run_id": result.run_id, "kind": dialogue["kind"],
                     "messages": json.dumps(messages, ensure_ascii=False), "sources": json.dumps([SOURCE] * answers),
                     "verdicts": json.dumps(verdicts[id(dialogue)][:answers]), "rejected": json.dumps([None] * answers),
                     "created": now()})
        result.replies += answers
    store = engine.store
    ensure_table(store)

    def write():  # one transaction: an import is stored whole or not at all
        if replace_old:
            store.db.execute(f"delete from {TABLE} where character = ?", [character.id])
        if rows:
            store.db[TABLE].insert_all(rows)

    store.write(write)
    result.dialogues, result.dropped = len(rows), dict(dropped)
    return result

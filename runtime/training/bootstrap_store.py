"""The `bootstrap_dialogues` table: bootstrapped dialogues, kept apart from the users' log, and their pairs."""

from __future__ import annotations

import json

import sqlite_utils

TABLE = "bootstrap_dialogues"

migrations = sqlite_utils.Migrations("personae.bootstrap")


@migrations(name="m001_bootstrap_dialogues")
def m001_bootstrap_dialogues(db: sqlite_utils.Database) -> None:
    """One row per bootstrapped dialogue (databases from before this migration already have it)."""
    db[TABLE].create({"id": int, "character": str, "run_id": str, "kind": str, "messages": str, "sources": str,
                      "verdicts": str, "created": str}, pk="id", if_not_exists=True)
    db[TABLE].create_index(["character"], if_not_exists=True)


@migrations(name="m002_bootstrap_rejected")
def m002_bootstrap_rejected(db: sqlite_utils.Database) -> None:
    """Per assistant turn, the worst candidate the audit turned down (a DPO pair's rejected side), or null."""
    db[TABLE].add_column("rejected", str)


def ensure_table(store) -> None:
    """Apply the bootstrap migrations (idempotent)."""
    store.apply_migrations(migrations)


def stored_dialogues(store, character_id: str) -> list[dict]:
    """A character's bootstrapped dialogues, oldest first: {"id", "kind", "messages", "rejected", ...}."""
    if TABLE not in store.db.table_names():
        return []
    rows = store.query(f"select * from {TABLE} where character = ? order by id", [character_id])
    for row in rows:
        row["messages"] = json.loads(row["messages"])
        row["rejected"] = json.loads(row.get("rejected") or "[]")
    return rows


def clear_dialogues(store, character_id: str) -> int:
    """Remove a character's bootstrapped dialogues; return how many there were."""
    count = len(stored_dialogues(store, character_id))
    if count:
        store.write(lambda: store.db.execute(f"delete from {TABLE} where character = ?", [character_id]))
    return count


def bootstrap_pairs(store, character_id: str, system: str) -> list[dict]:
    """DPO pairs from rejection sampling: each kept reply over the worst candidate the audit turned down."""
    pairs = []
    for row in stored_dialogues(store, character_id):
        messages, rejected = row["messages"], row["rejected"]
        answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        for turn, index in enumerate(answers):
            worse = rejected[turn] if turn < len(rejected) else None
            if not worse or worse.strip() == messages[index]["content"].strip():
                continue
            pairs.append({"prompt": [{"role": "system", "content": system}, *messages[:index]],
                          "chosen": [messages[index]], "rejected": [{"role": "assistant", "content": worse}]})
    return pairs

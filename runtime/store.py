"""The SQLite log: conversations, messages, feedback, users, bindings; its migrations."""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path

import sqlite_utils
from sqlite_utils import Migrations

from runtime.errors import PersonaeError


class StoreError(PersonaeError, RuntimeError):
    """The database cannot be used; the message says what is wrong and what to do."""


migrations = Migrations("personae")


@migrations(name="m001_initial")
def m001_initial(db: sqlite_utils.Database) -> None:
    """Users, conversations, messages with full-text search, feedback, channel bindings."""
    db["users"].create(
        {"id": str, "name": str, "platform": str, "training_opt_out": int, "created": str},
        pk="id",
        defaults={"training_opt_out": 0},
    )
    db["conversations"].create(
        {"id": int, "platform": str, "channel": str, "character": str, "started": str, "updated": str},
        pk="id",
    )
    db["conversations"].create_index(["platform", "channel", "character"])
    db["messages"].create(
        {
            "id": int,
            "conversation_id": int,
            "role": str,  # user | assistant
            "text": str,
            "character": str,
            "weights_version": str,  # "base", "lora:NAME@3", ...
            "platform": str,
            "channel": str,
            "user_id": str,
            "user_name": str,
            "reply_to": int,  # the message this one answers
            "swipe_of": int,  # a regenerated reply points at the one it re-rolls
            "platform_message_id": str,
            "prompt_tokens": int,
            "completion_tokens": int,
            "ttft_ms": float,
            "latency_ms": float,
            "created": str,
            "meta": str,  # JSON
        },
        pk="id",
        foreign_keys=[("conversation_id", "conversations", "id")],
    )
    db["messages"].create_index(["conversation_id", "id"])
    db["messages"].create_index(["character", "id"])
    db["messages"].create_index(["user_id"])
    db["messages"].create_index(["platform_message_id"])
    db["messages"].enable_fts(["text"], create_triggers=True)
    db["feedback"].create(
        {"id": int, "message_id": int, "user_id": str, "value": int, "source": str, "created": str},
        pk="id",
        foreign_keys=[("message_id", "messages", "id")],
    )
    db["feedback"].create_index(["message_id", "user_id"], unique=True)
    db["bindings"].create(
        {"platform": str, "channel": str, "character": str, "user_id": str, "created": str},
        pk=("platform", "channel", "character", "user_id"),
    )


def now() -> str:
    """The current UTC time as ISO 8601, the one timestamp format of the log."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Store:
    """The SQLite log behind every platform; safe to share between threads."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self._lock = threading.RLock()
        try:
            if self.path is None:
                self.db = sqlite_utils.Database(memory=True)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                connection = sqlite3.connect(str(self.path), check_same_thread=False, timeout=10)
                self.db = sqlite_utils.Database(connection)
                self.db.enable_wal()
            migrations.apply(self.db)
        except sqlite3.DatabaseError as error:
            raise StoreError(self._explain(error)) from None

    def apply_migrations(self, plugin_migrations) -> None:
        """Apply a part's own sqlite_utils Migrations (registry, audits, Discord) under the store's lock."""
        try:
            with self._lock:
                plugin_migrations.apply(self.db)
        except sqlite3.DatabaseError as error:
            raise StoreError(self._explain(error)) from None

    def _explain(self, error: sqlite3.DatabaseError) -> str:
        """Say what a database error means for the user, without touching the file."""
        text = str(error)
        where = self.path or "in-memory database"
        if "locked" in text or "busy" in text:
            return f"{where}: the database is locked by another process ({text}); stop it or wait, then retry"
        if "not a database" in text or "malformed" in text:
            return (
                f"{where}: the file is not a usable SQLite database ({text}); it was left untouched — "
                "restore it from a backup or point PERSONAE_DATA_DIR elsewhere"
            )
        return f"{where}: {text}"

    def write(self, function, *args, **kwargs):
        """Run a write in one transaction under the store's lock, with clear errors."""
        with self._lock:
            try:
                if self.db.conn.in_transaction:  # a write inside a write: a savepoint of the outer one
                    with self.db.atomic():
                        return function(*args, **kwargs)
                # An explicit transaction: sqlite_utils commits each statement by itself otherwise, and a
                # crash between two statements of one write would keep half of it. IMMEDIATE takes the
                # write lock up front (waiting up to the busy timeout), so a read-then-write never deadlocks.
                self.db.conn.execute("BEGIN IMMEDIATE")
                try:
                    result = function(*args, **kwargs)
                except BaseException:
                    self.db.conn.rollback()
                    raise
                self.db.conn.commit()
                return result
            except sqlite3.DatabaseError as error:
                raise StoreError(self._explain(error)) from None

    def query(self, sql: str, params=()) -> list[dict]:
        """Rows of a read query as dicts."""
        with self._lock:
            try:
                return list(self.db.query(sql, params))
            except sqlite3.DatabaseError as error:
                raise StoreError(self._explain(error)) from None

    # --- users -------------------------------------------------------------------------

    def ensure_user(self, user_id: str, name: str = "", platform: str = "") -> None:
        """Record a user the first time they speak."""
        self.write(
            lambda: self.db.execute(
                "insert or ignore into users (id, name, platform, training_opt_out, created) values (?, ?, ?, 0, ?)",
                [user_id, name, platform, now()],
            )
        )

    def set_opt_out(self, user_id: str, opted_out: bool) -> None:
        """Allow or forbid using a user's messages for training."""
        self.ensure_user(user_id)
        self.write(
            lambda: self.db.execute("update users set training_opt_out = ? where id = ?", [int(opted_out), user_id])
        )

    def opted_out_users(self) -> set[str]:
        """Ids of users whose messages must never be trained on."""
        return {row["id"] for row in self.query("select id from users where training_opt_out = 1")}

    def forget_user(self, user_id: str) -> dict:
        """Delete a user's messages and feedback (and the replies to them); return the counts."""

        def forget():
            feedback = self.db.execute("delete from feedback where user_id = ?", [user_id]).rowcount
            # Replies to the user's messages quote them back, so they go too.
            replies = self.db.execute(
                "delete from messages where reply_to in (select id from messages where user_id = ?)", [user_id]
            ).rowcount
            messages = self.db.execute("delete from messages where user_id = ?", [user_id]).rowcount
            self.db.execute(
                "delete from feedback where message_id not in (select id from messages)"
            )
            # Remember the user as opted out, so a later message isn't trained on by accident.
            self.db.execute(
                "insert into users (id, name, platform, training_opt_out, created) values (?, '', '', 1, ?) "
                "on conflict(id) do update set training_opt_out = 1, name = ''",
                [user_id, now()],
            )
            return {"messages": messages + replies, "feedback": feedback}

        return self.write(forget)

    # --- conversations and messages ----------------------------------------------------

    def conversation_id(self, platform: str, channel: str, character: str) -> int:
        """The conversation of (platform, channel, character), created on first use."""

        def find_or_create():
            rows = list(
                self.db.query(
                    "select id from conversations where platform = ? and channel = ? and character = ? "
                    "order by id desc limit 1",
                    [platform, channel, character],
                )
            )
            if rows:
                self.db.execute("update conversations set updated = ? where id = ?", [now(), rows[0]["id"]])
                return rows[0]["id"]
            return None

        with self._lock:  # find-or-create must not race another thread's
            found = self.write(find_or_create)
            return found if found is not None else self.new_conversation(platform, channel, character)

    def new_conversation(self, platform: str, channel: str, character: str) -> int:
        """Start a fresh conversation; later turns of that channel and character go to it."""
        stamp = now()
        return self.write(
            lambda: self.db["conversations"].insert(
                {"platform": platform, "channel": channel, "character": character, "started": stamp, "updated": stamp}
            ).last_pk
        )

    def log_message(self, **fields) -> dict:
        """Insert one message row and return it as stored."""
        row = {key: value for key, value in fields.items() if value is not None}
        row.setdefault("created", now())
        if isinstance(row.get("meta"), dict):
            row["meta"] = json.dumps(row["meta"])
        message_id = self.write(lambda: self.db["messages"].insert(row).last_pk)
        return self.message(message_id)

    def message(self, message_id: int) -> dict | None:
        """One message row by id."""
        rows = self.query("select * from messages where id = ?", [message_id])
        return rows[0] if rows else None

    def delete_message(self, message_id: int) -> None:
        """Remove one message that was never answered (its turn failed before generation)."""
        self.write(lambda: self.db.execute("delete from messages where id = ?", [message_id]))

    def update_message(self, message_id: int, **fields) -> None:
        """Change fields of a logged message (e.g. the platform's message id once sent)."""
        self.write(lambda: self.db["messages"].update(message_id, fields))

    def chain_swipes(self, message_ids: list[int]) -> None:
        """Make versions of one reply swipes of each other in this order: the last is the one that counts."""

        def chain():
            previous = None
            for message_id in message_ids:
                self.db.execute("update messages set swipe_of = ? where id = ?", [previous, message_id])
                previous = message_id

        self.write(chain)

    def history(self, conversation_id: int, limit: int = 40, before_id: int | None = None,
                degenerate: bool = False) -> list[dict]:
        """The latest messages of a conversation, oldest first, without superseded swipes (or degenerate replies)."""
        rows = self.query(
            "select * from messages where conversation_id = ? and (? is null or id < ?) "
            # A regenerated reply replaces the one it re-rolls in the history.
            "and id not in (select swipe_of from messages where swipe_of is not null) "
            # A reply the degeneration guard stopped would teach the model its own word salad.
            "and (? or coalesce(json_extract(meta, '$.finish_reason'), '') != 'degenerate') "
            "order by id desc limit ?",
            [conversation_id, before_id, before_id, degenerate, limit],
        )
        return rows[::-1]

    def recent(self, limit: int = 20, search: str | None = None, character: str | None = None) -> list[dict]:
        """The latest messages, optionally matching a full-text search."""
        where, params = [], []
        if search:
            where.append("id in (select rowid from messages_fts where messages_fts match ?)")
            params.append(_fts_query(search))
        if character:
            where.append("character = ?")
            params.append(character)
        clause = ("where " + " and ".join(where)) if where else ""
        rows = self.query(f"select * from messages {clause} order by id desc limit ?", [*params, limit])
        return rows[::-1]

    # --- feedback ----------------------------------------------------------------------

    def add_feedback(self, message_id: int, user_id: str, value: int, source: str = "") -> None:
        """Record (or change) one user's thumbs up (+1) or down (-1) on a message."""
        if value not in (-1, 1):
            raise ValueError("feedback value must be 1 (thumbs up) or -1 (thumbs down)")
        if self.message(message_id) is None:
            raise KeyError(f"no logged message with id {message_id}")
        self.write(
            lambda: self.db["feedback"].upsert(
                {"message_id": message_id, "user_id": user_id, "value": value, "source": source, "created": now()},
                pk=("message_id", "user_id"),
            )
        )

    def remove_feedback(self, message_id: int, user_id: str) -> None:
        """Take back a user's feedback on a message."""
        self.write(
            lambda: self.db.execute("delete from feedback where message_id = ? and user_id = ?", [message_id, user_id])
        )

    # --- bindings of characters to channels ----------------------------------------------

    def bind(self, platform: str, channel: str, character: str, user_id: str = "") -> None:
        """Bind a character to a channel (user_id set: only for that user, as in DMs)."""
        self.write(
            lambda: self.db["bindings"].upsert(
                {"platform": platform, "channel": channel, "character": character, "user_id": user_id, "created": now()},
                pk=("platform", "channel", "character", "user_id"),
            )
        )

    def unbind(self, platform: str, channel: str, character: str | None = None, user_id: str = "") -> int:
        """Remove one binding, or every binding of a channel; return how many went."""
        sql = "delete from bindings where platform = ? and channel = ? and user_id = ?"
        params = [platform, channel, user_id]
        if character:
            sql += " and character = ?"
            params.append(character)
        return self.write(lambda: self.db.execute(sql, params).rowcount)

    def bound_characters(self, platform: str, channel: str, user_id: str = "") -> list[str]:
        """Characters bound to a channel (for a user first, then for everyone), oldest binding first."""
        rows = self.query(
            "select character from bindings where platform = ? and channel = ? and user_id in (?, '') "
            "order by user_id = '' , created",
            [platform, channel, user_id],
        )
        seen = []
        for row in rows:
            if row["character"] not in seen:
                seen.append(row["character"])
        return seen


def _fts_query(text: str) -> str:
    """Quote each word so user text can't be read as FTS syntax."""
    words = [word.replace('"', '""') for word in text.split()]
    return " ".join(f'"{word}"' for word in words)

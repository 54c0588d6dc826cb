"""The Discord plugin's own tables: cached webhooks, Discord message ids, one-time notices, channel prompts and notes,
messages refused unanswered."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import sqlite_utils
from sqlite_utils import Migrations

from runtime.store import now

migrations = Migrations("personae.discord")


@migrations(name="m001_webhooks_messages_notices")
def m001_webhooks_messages_notices(db: sqlite_utils.Database) -> None:
    """Webhook per (channel, character); Discord message id -> logged message; notices sent."""
    db["discord_webhooks"].create(
        {"channel_id": str, "character": str, "webhook_id": str, "webhook_token": str, "created": str},
        pk=("channel_id", "character"),
    )
    db["discord_messages"].create(
        {"discord_message_id": str, "message_id": int, "channel_id": str, "created": str},
        pk="discord_message_id",
    )
    db["discord_messages"].create_index(["message_id"])
    db["discord_notices"].create({"key": str, "created": str}, pk="key")


@migrations(name="m002_channel_prompts")
def m002_channel_prompts(db: sqlite_utils.Database) -> None:
    """Per-channel prompt additions set by admins (not who set them: nothing for forget-me to find)."""
    db["discord_channel_prompts"].create({"channel_id": str, "text": str, "updated": str}, pk="channel_id")


@migrations(name="m003_no_webhook_tokens")
def m003_no_webhook_tokens(db: sqlite_utils.Database) -> None:
    """Webhook tokens are secrets: no longer stored (the bot finds them again through Discord's API)."""
    db.execute("update discord_webhooks set webhook_token = ''")


@migrations(name="m004_channel_notes")
def m004_channel_notes(db: sqlite_utils.Database) -> None:
    """Per-channel author's notes (SillyTavern's chat-level Author's Note): text and depth."""
    db["discord_channel_notes"].create({"channel_id": str, "text": str, "depth": int, "updated": str},
                                       pk="channel_id")


@migrations(name="m005_refusals")
def m005_refusals(db: sqlite_utils.Database) -> None:
    """Messages left unanswered on purpose (rate limits, a full queue): ids and the reason, no text and no user."""
    db["discord_refusals"].create({"discord_message_id": str, "channel_id": str, "reason": str, "created": str},
                                  pk="discord_message_id")
    db["discord_refusals"].create_index(["created"])


REFUSALS_KEPT = timedelta(days=7)  # an account of floods, not a history: older rows are dropped as new ones come
REFUSAL_REASONS = ("user_rate", "channel_rate", "busy")


class DiscordTables:
    """Reads and writes of the plugin's tables through the shared store."""

    def __init__(self, store):
        self.store = store
        store.apply_migrations(migrations)

    # --- webhooks ---
    def webhook(self, channel_id: int, character: str) -> int | None:
        """The remembered webhook id for a channel and character (its token is never stored)."""
        rows = self.store.query(
            "select webhook_id, webhook_token from discord_webhooks where channel_id = ? and character = ?",
            [str(channel_id), character],
        )
        return int(rows[0]["webhook_id"]) if rows else None

    def remember_webhook(self, channel_id: int, character: str, webhook_id: int) -> None:
        # The token stays in memory only: anyone who reads personae.db could post as the character.
        self.store.write(lambda: self.store.db["discord_webhooks"].upsert(
            {"channel_id": str(channel_id), "character": character, "webhook_id": str(webhook_id),
             "webhook_token": "", "created": now()}, pk=("channel_id", "character")))

    def forget_webhook(self, channel_id: int, character: str) -> None:
        self.store.write(lambda: self.store.db.execute(
            "delete from discord_webhooks where channel_id = ? and character = ?", [str(channel_id), character]))

    # --- Discord message id -> logged message ---
    def map_messages(self, discord_ids: list[int], message_id: int, channel_id: int) -> None:
        """Point every Discord message of one reply at its logged message (for reactions)."""
        stamp = now()
        rows = [{"discord_message_id": str(d), "message_id": message_id, "channel_id": str(channel_id),
                 "created": stamp} for d in discord_ids]
        self.store.write(lambda: self.store.db["discord_messages"].upsert_all(rows, pk="discord_message_id"))
        if discord_ids:
            self.store.update_message(message_id, platform_message_id=str(discord_ids[0]))

    def logged_message(self, discord_id: int) -> dict | None:
        """The logged message a Discord message shows (a character's reply or a user's turn)."""
        rows = self.store.query(
            "select m.* from discord_messages d join messages m on m.id = d.message_id "
            "where d.discord_message_id = ?", [str(discord_id)])
        if not rows:
            rows = self.store.query(
                "select * from messages where platform = 'discord' and platform_message_id = ? "
                "order by id desc limit 1", [str(discord_id)])
        return rows[0] if rows else None

    def drop_orphans(self) -> None:
        """Forget mappings of logged messages that were deleted (forget-me)."""
        self.store.write(lambda: self.store.db.execute(
            "delete from discord_messages where message_id not in (select id from messages)"))

    # --- per-channel prompt additions ---
    def channel_prompt(self, channel_ids) -> dict | None:
        """The prompt addition of the first of these channels that has one (a thread, then its parent)."""
        for channel_id in channel_ids:
            if channel_id:
                rows = self.store.query("select * from discord_channel_prompts where channel_id = ?",
                                        [str(channel_id)])
                if rows:
                    return rows[0]
        return None

    def set_channel_prompt(self, channel_id: int, text: str) -> None:
        self.store.write(lambda: self.store.db["discord_channel_prompts"].upsert(
            {"channel_id": str(channel_id), "text": text, "updated": now()}, pk="channel_id"))

    def clear_channel_prompt(self, channel_id: int) -> dict | None:
        """Remove a channel's own prompt addition; return what it was."""
        previous = self.channel_prompt([channel_id])
        self.store.write(lambda: self.store.db.execute(
            "delete from discord_channel_prompts where channel_id = ?", [str(channel_id)]))
        return previous

    # --- per-channel author's notes ---
    def channel_note(self, channel_ids) -> dict | None:
        """The author's note of the first of these channels that has one (a thread, then its parent)."""
        for channel_id in channel_ids:
            if channel_id:
                rows = self.store.query("select * from discord_channel_notes where channel_id = ?",
                                        [str(channel_id)])
                if rows:
                    return rows[0]
        return None

    def set_channel_note(self, channel_id: int, text: str, depth: int) -> None:
        self.store.write(lambda: self.store.db["discord_channel_notes"].upsert(
            {"channel_id": str(channel_id), "text": text, "depth": depth, "updated": now()}, pk="channel_id"))

    def clear_channel_note(self, channel_id: int) -> dict | None:
        """Remove a channel's own author's note; return what it was."""
        previous = self.channel_note([channel_id])
        self.store.write(lambda: self.store.db.execute(
            "delete from discord_channel_notes where channel_id = ?", [str(channel_id)]))
        return previous

    # --- messages refused unanswered ---
    def record_refusal(self, discord_id: int, channel_id: int, reason: str) -> None:
        """Log that a message got no reply on purpose, and why (one of REFUSAL_REASONS)."""
        stamp = now()
        cutoff = (datetime.now(timezone.utc) - REFUSALS_KEPT).isoformat(timespec="milliseconds")

        def record():
            self.store.db.execute("delete from discord_refusals where created < ?", [cutoff])
            self.store.db["discord_refusals"].upsert({"discord_message_id": str(discord_id),
                                                      "channel_id": str(channel_id), "reason": reason,
                                                      "created": stamp}, pk="discord_message_id")
        self.store.write(record)

    def refusals(self) -> dict[str, str]:
        """Discord message id -> why it got no reply, for the refusals kept."""
        return {r["discord_message_id"]: r["reason"]
                for r in self.store.query("select discord_message_id, reason from discord_refusals")}

    # --- notices told once ---
    def first_notice(self, key: str) -> bool:
        """True the first time a notice key is seen (and remember it), False afterwards."""
        def claim():
            return self.store.db.execute(
                "insert or ignore into discord_notices (key, created) values (?, ?)", [key, now()]).rowcount
        return bool(self.store.write(claim))

"""Per-channel prompt additions and author's notes set by admins, in every prompt there (inside its budget)."""

from __future__ import annotations

import discord

# Kept short: it is part of every prompt in the channel, and the history gives way to it.
MAX_PROMPT_CHARS = 1000
MAX_NOTE_DEPTH = 100  # SillyTavern's author's note depth is a small count of messages from the end


class ChannelPrompts:
    """The additions of a bot's channels; threads use their parent's addition."""

    def __init__(self, bot):
        self.bot = bot

    def for_channel(self, channel) -> dict | None:
        """The addition in force in a channel (its own, or its parent's for a thread)."""
        parent = channel.parent_id if isinstance(channel, discord.Thread) else None
        return self.bot.tables.channel_prompt([channel.id, parent])

    def addition(self, channel) -> str:
        """The text a Turn in this channel carries as its prompt_addition (empty when none is set)."""
        row = self.for_channel(channel) if channel is not None else None
        return row["text"] if row else ""

    def note(self, channel) -> tuple[str, int]:
        """The channel's author's note and its depth (a thread uses its parent's); ("", 4) when none is set."""
        parent = channel.parent_id if isinstance(channel, discord.Thread) else None
        row = self.bot.tables.channel_note([channel.id, parent]) if channel is not None else None
        return (row["text"], int(row["depth"])) if row else ("", 4)

"""Per-channel prompt additions set by admins, added to every prompt there (inside its token budget)."""

from __future__ import annotations

import discord

# Kept short: it is part of every prompt in the channel, and the history gives way to it.
MAX_PROMPT_CHARS = 1000


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

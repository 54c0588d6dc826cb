"""Per-channel prompt additions set by admins, added to every prompt there (a prompt_messages hook)."""

from __future__ import annotations

import discord

from plugins.discord.identity import PLATFORM
from runtime.hookspecs import hookimpl

# Kept short: the addition is added after the prompt was fitted to its token budget.
MAX_PROMPT_CHARS = 1000


class ChannelPrompts:
    """Registered on the engine's plugins while a bot runs; threads use their parent's addition."""

    def __init__(self, bot):
        self.bot = bot

    def for_channel(self, channel) -> dict | None:
        """The addition in force in a channel (its own, or its parent's for a thread)."""
        parent = channel.parent_id if isinstance(channel, discord.Thread) else None
        return self.bot.tables.channel_prompt([channel.id, parent])

    @hookimpl
    def prompt_messages(self, character, messages, turn):
        if turn.platform != PLATFORM or not messages or messages[0]["role"] != "system":
            return
        channel = self.bot.get_channel(int(turn.channel)) if turn.channel.isdigit() else None
        row = self.for_channel(channel) if channel is not None else self.bot.tables.channel_prompt([turn.channel])
        if row:
            # With the character's own instructions, so every chat template accepts it.
            addition = character.render(row["text"], turn.user_name).strip()
            messages[0] = {**messages[0], "content": f"{messages[0]['content']}\n\n{addition}"}

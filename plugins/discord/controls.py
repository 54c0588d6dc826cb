"""Stop and re-roll buttons under a character's reply (persistent: they work after a restart too)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import discord

from plugins.discord.commands import is_admin, respond
from plugins.discord.identity import PLATFORM

log = logging.getLogger("plugins.discord")

STOP_ID, REROLL_ID = "personae:stop", "personae:reroll"


@dataclass
class LiveReply:
    """A reply still being written, found by its first Discord message (what the Stop button is on)."""

    stream: object  # runtime.chat.streaming.StreamedReply
    requester: int  # the Discord user whose message (or re-roll) started it
    character: object
    stopped_by: int | None = None


def _button(custom_id: str) -> discord.ui.Button:
    if custom_id == STOP_ID:
        return discord.ui.Button(style=discord.ButtonStyle.secondary, label="Stop", emoji="⏹️", custom_id=STOP_ID)
    return discord.ui.Button(style=discord.ButtonStyle.secondary, label="Re-roll", emoji="🔄", custom_id=REROLL_ID)


def controls(state: str) -> discord.ui.View | None:
    """The buttons a reply shows: Stop while it is written, Re-roll once logged, none once stopped."""
    ids = {"streaming": [STOP_ID], "final": [REROLL_ID]}.get(state)
    if not ids:
        return None
    view = discord.ui.View(timeout=None)
    for custom_id in ids:
        view.add_item(_button(custom_id))
    # Only the components are sent: clicks reach the one persistent ReplyControls, so discord.py
    # need not keep a view per message (stopped views are not stored).
    view.stop()
    return view


class ReplyControls(discord.ui.View):
    """The bot's single handler of every Stop and Re-roll click, registered once with add_view."""

    def __init__(self, bot):
        super().__init__(timeout=None)
        self.bot = bot
        for custom_id in (STOP_ID, REROLL_ID):
            button = _button(custom_id)
            button.callback = self._stop if custom_id == STOP_ID else self._reroll
            self.add_item(button)

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.channel is not None and not self.bot.allowed(interaction.channel):
            await interaction.response.send_message("Personae is not enabled in this server or channel.",
                                                    ephemeral=True)
            return False
        return True

    async def on_error(self, interaction: discord.Interaction, error: Exception, item) -> None:
        log.error("button %s failed", getattr(item, "custom_id", item), exc_info=error)
        await respond(interaction, "Something went wrong with that button; the error was logged.")

    async def _stop(self, interaction: discord.Interaction) -> None:
        live = self.bot.live.get(interaction.message.id)
        if live is None or live.stopped_by is not None:
            return await respond(interaction, "That reply has already finished.")
        if interaction.user.id != live.requester and not is_admin(self.bot, interaction, "manage_messages"):
            return await respond(interaction, "Only the person it answers, or a moderator (Manage Messages), "
                                              "can stop this reply.")
        live.stopped_by = interaction.user.id
        live.stream.cancel()
        await respond(interaction, f"Stopped {live.character.name}'s reply.")

    async def _reroll(self, interaction: discord.Interaction) -> None:
        bot = self.bot
        row = bot.tables.logged_message(interaction.message.id)
        if row is None or row["role"] != "assistant":
            return await respond(interaction, "This message is no longer in the log, so it can't be re-rolled.")
        try:
            character = bot.engine.catalog.get(row["character"])
        except KeyError:
            return await respond(interaction, f"{row['character']} is no longer installed.")
        store = bot.engine.store
        conversation = store.conversation_id(PLATFORM, str(interaction.channel.id), character.id)
        logged = store.history(conversation, limit=bot.engine.settings.history_turns, degenerate=True)
        latest = next((m for m in reversed(logged) if m["role"] == "assistant"), None)
        if latest is None or latest["id"] != row["id"]:
            return await respond(interaction, f"Only {character.name}'s latest reply here can be re-rolled.")
        await bot.reroll(interaction, character)

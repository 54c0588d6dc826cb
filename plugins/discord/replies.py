"""How a character speaks in a channel: its own webhook, or plain bot messages; streamed edits."""

from __future__ import annotations

import logging

import discord

from plugins.discord.splitting import DISCORD_LIMIT, split_message

log = logging.getLogger("plugins.discord")

NO_MENTIONS = discord.AllowedMentions.none()
WEBHOOK_NOTICE = (
    "⚠️ I can't use webhooks in {channel} (the **Manage Webhooks** permission is missing), so characters "
    "answer as this bot with their name in bold instead of with their own name and avatar. A server admin "
    "can grant the permission to my role under Server Settings → Roles, or in the channel's permissions."
)


class WebhookVoice:
    """A character speaking through its own webhook (its name and avatar) in a channel or thread."""

    def __init__(self, webhook: discord.Webhook, character, thread=None):
        self.webhook, self.character, self.thread = webhook, character, thread
        self.limit = DISCORD_LIMIT
        self.via_webhook = True

    def _thread(self):
        return self.thread if self.thread is not None else discord.utils.MISSING

    async def send(self, content: str, **extra) -> discord.Message:
        return await self.webhook.send(content, username=self.character.name[:80], wait=True,
                                       allowed_mentions=NO_MENTIONS, thread=self._thread(), **extra)

    async def edit(self, message: discord.Message, content: str, **extra) -> None:
        await self.webhook.edit_message(message.id, content=content, allowed_mentions=NO_MENTIONS,
                                        thread=self._thread(), **extra)

    async def delete(self, message: discord.Message) -> None:
        await self.webhook.delete_message(message.id, thread=self._thread())


class PlainVoice:
    """A character speaking as the bot itself, each message headed by the character's name."""

    def __init__(self, channel, character):
        self.channel, self.character = channel, character
        self.header = f"**{discord.utils.escape_markdown(character.name)}**\n"
        self.limit = DISCORD_LIMIT - len(self.header)
        self.via_webhook = False

    async def send(self, content: str, **extra) -> discord.Message:
        return await self.channel.send(self.header + content, allowed_mentions=NO_MENTIONS, **extra)

    async def edit(self, message: discord.Message, content: str, **extra) -> None:
        await message.edit(content=self.header + content, allowed_mentions=NO_MENTIONS, **extra)

    async def delete(self, message: discord.Message) -> None:
        await message.delete()


class Post:
    """The Discord messages showing one reply: sent, edited as it grows, split past 2000 chars."""

    def __init__(self, voice, controls=None):
        self.voice = voice
        self.controls = controls  # controls(state) -> the buttons under the first message (a View) or None
        self.messages: list[discord.Message] = []
        self._shown: list[str] = []
        self._state: str | None = None  # whose buttons the first message shows
        self._buttons = False

    @property
    def ids(self) -> list[int]:
        return [message.id for message in self.messages]

    async def show(self, text: str, final: bool = False, state: str | None = None) -> None:
        """Make the channel show `text`: edit changed chunks, send new ones, drop extra ones at the end.

        `state` (streaming, final, stopped; by default from `final`) picks the first message's buttons.
        """
        chunks = split_message(text, self.voice.limit)
        if not chunks:
            if not final:
                return
            chunks = ["…"]  # an empty reply still answers, so the user isn't met with silence
        state = state or ("final" if final else "streaming")
        new_state = self.controls is not None and state != self._state
        first_view = self.controls(state) if new_state else None
        for index, chunk in enumerate(chunks):
            view = first_view if index == 0 else None
            restyle = new_state and index == 0 and (view is not None or self._buttons)  # None removes old ones
            if index < len(self.messages):
                if self._shown[index] != chunk or restyle:
                    await self.voice.edit(self.messages[index], chunk, **({"view": view} if restyle else {}))
                    self._shown[index] = chunk
            else:
                self.messages.append(await self.voice.send(chunk, **({"view": view} if view is not None else {})))
                self._shown.append(chunk)
        if new_state:
            self._state, self._buttons = state, first_view is not None
        if final:
            for message in self.messages[len(chunks):]:
                await self.voice.delete(message)
            del self.messages[len(chunks):], self._shown[len(chunks):]


def webhook_name_allowed(name: str) -> bool:
    """False for names Discord refuses as webhook usernames (containing "discord" or "clyde")."""
    folded = name.casefold()
    return "discord" not in folded and "clyde" not in folded and bool(name.strip())


class Speaker:
    """Finds (and caches) how each character speaks in each channel."""

    def __init__(self, bot, tables, config):
        self.bot, self.tables, self.config = bot, tables, config
        self._webhooks: dict[tuple[int, str], discord.Webhook] = {}

    async def voice(self, channel, character):
        """A webhook voice where webhooks can be used, else a plain one (telling an admin once why)."""
        parent = channel.parent if isinstance(channel, discord.Thread) else channel
        if getattr(parent, "guild", None) is None or not hasattr(parent, "create_webhook"):
            return PlainVoice(channel, character)  # DMs and group chats have no webhooks
        if not parent.permissions_for(parent.guild.me).manage_webhooks:
            await self._notify_missing_permission(parent)
            return PlainVoice(channel, character)
        if not webhook_name_allowed(character.name):
            # Discord refuses webhook names containing "discord" or "clyde": speak as the bot instead.
            return PlainVoice(channel, character)
        try:
            webhook = await self._webhook(parent, character)
        except discord.Forbidden:
            await self._notify_missing_permission(parent)
            return PlainVoice(channel, character)
        except discord.HTTPException as error:
            if error.status >= 500:
                raise
            log.warning("Discord refused a webhook for %s in channel %s (%s); it speaks as the bot",
                        character.id, parent.id, error.text or error.status)
            return PlainVoice(channel, character)
        return WebhookVoice(webhook, character, channel if isinstance(channel, discord.Thread) else None)

    async def _webhook(self, channel, character) -> discord.Webhook:
        key = (channel.id, character.id)
        if key in self._webhooks:
            return self._webhooks[key]
        # Only the id is remembered across restarts; the token is fetched again from Discord.
        webhook = await self._find_or_create(channel, character, self.tables.webhook(channel.id, character.id))
        self.tables.remember_webhook(channel.id, character.id, webhook.id)
        self._webhooks[key] = webhook
        return webhook

    async def _find_or_create(self, channel, character, known_id: int | None = None) -> discord.Webhook:
        """Reuse this bot's webhook for the character if the channel has one, else create it."""
        name = character.name[:80]
        ours = [w for w in await channel.webhooks() if w.token and w.user and w.user.id == self.bot.user.id]
        for webhook in ours:
            if webhook.id == known_id or webhook.name == name:
                return webhook
        log.info("creating a webhook for %s in channel %s", character.id, channel.id)
        return await channel.create_webhook(name=name, avatar=character.avatar_png or None,
                                            reason=f"Personae: {character.name} speaks with its own name and avatar")

    def forget(self, channel, character) -> None:
        """Drop a webhook that no longer works (deleted by someone), so the next reply recreates it."""
        parent = channel.parent if isinstance(channel, discord.Thread) else channel
        self._webhooks.pop((parent.id, character.id), None)
        self.tables.forget_webhook(parent.id, character.id)

    async def _notify_missing_permission(self, channel) -> None:
        if not self.tables.first_notice(f"webhooks:{channel.guild.id}"):
            return
        target = channel.guild.get_channel(self.config.admin_channel) if self.config.admin_channel else None
        target = target or channel
        log.warning("no Manage Webhooks permission in channel %s; characters speak as the bot", channel.id)
        try:
            await target.send(WEBHOOK_NOTICE.format(channel=channel.mention), allowed_mentions=NO_MENTIONS)
        except discord.HTTPException as error:
            log.warning("could not post the webhook notice: %s", error)

"""The Discord client: who answers a message, limits, streaming the engine's reply, reactions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re

import discord

from plugins.discord.commands import PersonaeTree, install, respond, sync
from plugins.discord.context import is_text_file, read_attachments, reroll_history, thread_history, with_attachments
from plugins.discord.controls import LiveReply, ReplyControls, controls
from plugins.discord.identity import PLATFORM, user_key
from plugins.discord.instructions import ChannelPrompts
from plugins.discord.ratelimit import RateLimiter
from plugins.discord.replies import NO_MENTIONS, Post, Speaker
from plugins.discord.tables import DiscordTables
from runtime.characters.catalog import UnknownCharacter
from runtime.chat.engine import Turn
from runtime.chat.streaming import StreamedReply
from runtime.generation.types import GeneratorBusy

log = logging.getLogger("plugins.discord")

FEEDBACK = {"👍": 1, "👎": -1}
# Words too common in character names to count as addressing one ("Captain", "Professor").
TITLES = {"the", "captain", "professor", "doctor", "dr", "mr", "mrs", "ms", "miss", "sir", "lady", "lord", "king",
          "queen", "prince", "princess", "general", "agent", "officer", "detective"}
_SKIN_TONES = re.compile("[\U0001F3FB-\U0001F3FF]")


@contextlib.asynccontextmanager
async def typing_indicator(channel):
    """Show "… is typing" while generating; a channel that refuses it doesn't stop the reply."""
    indicator = channel.typing()
    try:
        await indicator.__aenter__()
    except discord.HTTPException as error:
        log.debug("no typing indicator in %s: %s", getattr(channel, "id", channel), error)
        indicator = None
    try:
        yield
    finally:
        if indicator is not None:
            await indicator.__aexit__(None, None, None)


def required_permissions() -> discord.Permissions:
    """What the bot needs in a server (the integer goes in the invite link; see the README)."""
    return discord.Permissions(view_channel=True, send_messages=True, send_messages_in_threads=True,
                               read_message_history=True, embed_links=True, attach_files=True,
                               manage_webhooks=True)


def invite_url(application_id: int) -> str:
    """The link that adds the bot to a server with its slash commands and permissions."""
    return discord.utils.oauth_url(application_id, permissions=required_permissions(),
                                   scopes=("bot", "applications.commands"))


def name_patterns(character) -> list[str]:
    """The words that address a character: its name, its id, and its distinctive name words."""
    words = {character.name.lower(), character.id.replace("-", " ").lower()}
    words |= {w.lower() for w in re.findall(r"[\w']+", character.name) if len(w) >= 3 and w.lower() not in TITLES}
    return sorted(words, key=len, reverse=True)


def addresses(text: str, character) -> bool:
    """Whether a message names the character (as a whole word, any case)."""
    lowered = text.lower()
    return any(re.search(rf"(?<![\w]){re.escape(word)}(?![\w])", lowered) for word in name_patterns(character))


def choose(text: str, bound: list, mode: str, rng: random.Random, mentioned: bool = False) -> list:
    """Who answers among the characters bound here: those named, else per the `answer` mode."""
    named = [c for c in bound if addresses(text, c)]
    if named:
        return named
    if not bound:
        return []
    if mentioned or mode == "first":
        return [bound[0]]
    if mode == "all":
        return list(bound)
    if mode == "random":
        return [rng.choice(bound)]
    return []


class PersonaeBot(discord.Client):
    """A discord.py client that lets bound characters answer through the engine."""

    def __init__(self, engine, config, **options):
        intents = discord.Intents.default()
        intents.message_content = True  # privileged: enable it in the developer portal
        super().__init__(intents=intents, allowed_mentions=NO_MENTIONS, **options)
        self.engine, self.config = engine, config
        self.tables = DiscordTables(engine.store)
        self.speaker = Speaker(self, self.tables, config)
        self.user_limits = RateLimiter(config.user_rate, 60)
        self.channel_limits = RateLimiter(config.channel_rate, 60)
        self.rng = random.Random()
        self._streams: set[StreamedReply] = set()
        self.live: dict[int, LiveReply] = {}  # first Discord message of a reply being written -> its stream
        self.channel_prompts = ChannelPrompts(self)
        self.tree = PersonaeTree(self)
        install(self)

    async def setup_hook(self) -> None:
        if self.config.buttons:
            self.add_view(ReplyControls(self))
        self.loop.create_task(self._warm_up(), name="personae-warm-up")
        if self.config.sync_commands:
            await sync(self)
        if self.application_id:
            log.info("add the bot to a server with %s", invite_url(self.application_id))

    async def _warm_up(self) -> None:
        """Load the model now, so the first message isn't met with a long pause."""
        try:
            await asyncio.to_thread(lambda: self.engine.generator)
        except Exception:  # the first reply will meet (and report) the same problem
            log.exception("loading the model failed")

    async def close(self) -> None:
        for stream in list(self._streams):
            stream.cancel()
        await super().close()

    # --- where the bot serves, and who is bound there ------------------------------------

    def allowed(self, channel) -> bool:
        """Whether the configured allow-lists let the bot act in this channel (DMs always)."""
        guild = getattr(channel, "guild", None)
        if guild is None:
            return True
        if self.config.allowed_guilds and guild.id not in self.config.allowed_guilds:
            return False
        if self.config.allowed_channels:
            ids = {channel.id, getattr(channel, "parent_id", None)}
            return bool(ids & set(self.config.allowed_channels))
        return True

    def bound(self, channel, user) -> list:
        """Characters bound to a channel (a thread inherits its parent's); in DMs the default one."""
        store, uid = self.engine.store, user_key(user)
        names = store.bound_characters(PLATFORM, str(channel.id), uid)
        if not names and isinstance(channel, discord.Thread) and channel.parent_id:
            names = store.bound_characters(PLATFORM, str(channel.parent_id), uid)
        characters = []
        for name in names:
            try:
                characters.append(self.engine.catalog.get(name))
            except KeyError:
                log.warning("channel %s is bound to %r, which is no longer installed", channel.id, name)
        if not characters and getattr(channel, "guild", None) is None:
            characters = [self.engine.catalog.default(self.engine.settings.default_character)]
        return characters

    # --- messages ------------------------------------------------------------------------

    def ignores(self, message: discord.Message) -> bool:
        """Other bots, webhooks (the characters themselves) and the bot's own messages."""
        author = message.author
        return bool(author.bot or message.webhook_id or (self.user and author.id == self.user.id)
                    or message.type not in (discord.MessageType.default, discord.MessageType.reply))

    def clean_text(self, message: discord.Message) -> str:
        """The message as the model should read it: mentions as names, the bot's own mention dropped."""
        text = message.clean_content
        if self.user:
            me = message.guild.me if message.guild and message.guild.me else self.user
            text = text.replace(f"@{me.display_name}", "").replace(f"@{self.user.name}", "")
        return text.strip()

    async def on_message(self, message: discord.Message) -> None:
        if self.ignores(message) or not self.allowed(message.channel):
            return
        text = self.clean_text(message)
        if not text and not any(is_text_file(a) for a in message.attachments):
            return  # nothing to read (an empty message, or only pictures and such)
        characters = self.addressed(message, text)
        if not characters:
            if message.guild and self.mentioned(message) and not self.bound(message.channel, message.author):
                await self.tell(message, "No character talks in this channel yet — someone with Manage Channels "
                                         "can bind one with /character set NAME (see /character list).")
            return
        if len(message.content) > self.config.max_input_chars:
            await self.tell(message, f"That message is {len(message.content)} characters long; "
                                     f"characters here read at most {self.config.max_input_chars}. "
                                     "Please send a shorter one.")
            return
        if await self.rate_limited(message):
            return
        if message.attachments:
            # About half the prompt budget at ~4 characters a token: the card and the history keep the rest.
            files, skipped = await read_attachments(message, self.config.attachment_bytes,
                                                    2 * self.engine.settings.context_tokens)
            if not text and not files:
                return  # its text files could not be read: nothing to answer
            if skipped:
                await self.tell(message, "Not everything attached was read: " + "; ".join(skipped) + ".")
            text = with_attachments(text, files, skipped)
        text = self.with_reply_context(message, text)
        for character in characters:  # one after another, so "all" mode reads like a conversation
            await self.answer(message, character, text)

    def addressed(self, message: discord.Message, text: str) -> list:
        """The characters that answer this message (replied to, named, or by the answer mode)."""
        reference = message.reference
        if reference and reference.message_id:
            row = self.tables.logged_message(reference.message_id)
            if row and row["role"] == "assistant" and row["character"]:
                try:
                    return [self.engine.catalog.get(row["character"])]
                except KeyError:
                    pass
        bound = self.bound(message.channel, message.author)
        mode = "first" if message.guild is None else self.config.answer
        return choose(text, bound, mode, self.rng, self.mentioned(message))

    def mentioned(self, message: discord.Message) -> bool:
        """Whether the message @mentions the bot itself (not @everyone)."""
        return bool(self.user) and any(m.id == self.user.id for m in message.mentions)

    def with_reply_context(self, message: discord.Message, text: str) -> str:
        """Quote a replied-to message by someone else, so the character knows what it answers."""
        resolved = message.reference.resolved if message.reference else None
        if isinstance(resolved, discord.Message) and not resolved.webhook_id and resolved.content:
            quoted = resolved.clean_content.strip().replace("\n", " ")
            quoted = quoted if len(quoted) <= 300 else quoted[:300] + "…"
            return f'(replying to {resolved.author.display_name}: "{quoted}")\n{text}'
        return text

    async def rate_limited(self, message: discord.Message) -> bool:
        """Count the message against the user's and the channel's limits; answer politely once if over."""
        checks = (
            (self.user_limits, f"user:{message.author.id}", "user_rate",
             "You're sending messages faster than the characters can answer. Please wait {} s and try again."),
            (self.channel_limits, f"channel:{message.channel.id}", "channel_rate",
             "This channel is very busy right now; characters will answer again in {} s."),
        )
        for limits, key, reason, answer in checks:
            wait = limits.hit(key)
            if wait:
                # Logged every time; told once per window (later messages in it would only spam the channel).
                await self.refused(message, reason)
                if limits.should_warn(key, wait):
                    await self.tell(message, answer.format(wait))
                return True
        return False

    async def refused(self, message: discord.Message, reason: str) -> None:
        """Log a message left unanswered on purpose (off the event loop: the log's lock may be held)."""
        await asyncio.to_thread(self.tables.record_refusal, message.id, message.channel.id, reason)

    async def tell(self, message: discord.Message, text: str) -> None:
        """Answer a user as the bot itself (errors, limits), pinging nobody."""
        try:
            await message.reply(text, allowed_mentions=NO_MENTIONS, mention_author=False)
        except discord.HTTPException as error:
            log.warning("could not answer message %s: %s", message.id, error)

    def turn(self, channel, user, text: str, character, platform_message_id=None, history=None):
        """An engine Turn for a Discord channel and user ({{user}} is their display name), with the channel's
        prompt addition and author's note."""
        note, depth = self.channel_prompts.note(channel)
        return Turn(platform=PLATFORM, channel=str(channel.id), user_id=user_key(user), text=text,
                    user_name=getattr(user, "display_name", None) or str(user), character=character,
                    platform_message_id=platform_message_id, sampling=self.config.sampling, history=history,
                    prompt_addition=self.channel_prompts.addition(channel), authors_note=note,
                    authors_note_depth=depth)

    async def answer(self, message: discord.Message, character, text: str) -> None:
        # A reply to an older message continues that thread: it joins the history (None: the log as usual).
        history = await thread_history(self, message, character, self.config.reply_chain_depth)
        turn = self.turn(message.channel, message.author, text, character, str(message.id),
                         history)  # engine.reply adds the user
        await self.speak(message.channel, character, lambda: self.engine.reply(turn),
                         lambda words: self.tell(message, words), message.author.id,
                         on_busy=lambda: self.refused(message, "busy"))

    async def reroll(self, interaction: discord.Interaction, character) -> None:
        """Re-roll a character's latest reply in the interaction's channel, as a swipe (/regenerate, Re-roll)."""
        channel = interaction.channel
        await interaction.response.defer(ephemeral=True, thinking=True)
        # The reply answered a thread (a Discord reply chain): the re-roll sees that same thread.
        history = await reroll_history(self, channel, character, self.config.reply_chain_depth)
        turn = self.turn(channel, interaction.user, "", character, history=history)
        told = []

        async def tell(text: str) -> None:
            told.append(text)
            await respond(interaction, text)

        row = await self.speak(channel, character, lambda: self.engine.regenerate(turn), tell, interaction.user.id)
        if row is not None:
            await respond(interaction, f"Re-rolled {character.name}'s last reply; both versions are kept.")
        elif not told:  # stopped with its button: the "thinking…" answer still needs an end
            await respond(interaction, f"The re-roll of {character.name}'s reply was stopped; the earlier one "
                                       "stays.")

    def controls(self, state: str):
        """The buttons under a reply in this state, or None when they are turned off."""
        return controls(state) if self.config.buttons else None

    async def speak(self, channel, character, start, tell, requester: int | None = None,
                    on_busy=None) -> dict | None:
        """Generate a reply in a worker thread, show it (streamed or when done); map its ids; never silent.

        `on_busy`: awaited when the generator's queue is full (the user is told too)."""
        stream = live = None
        try:
            voice = await self.speaker.voice(channel, character)
            post = Post(voice, self.controls)
            async with typing_indicator(channel):
                stream = StreamedReply(start, whole=not self.config.streaming)
                self._streams.add(stream)
                live = LiveReply(stream, requester, character)
                text, shown_at = "", self.loop.time()
                async for piece in stream:
                    text += piece
                    if self.config.streaming and self.loop.time() - shown_at >= self.config.stream_interval:
                        post = await self.show(post, channel, character, text)
                        shown_at = self.loop.time()
                        if post.messages:  # the Stop button is on the first message
                            self.live[post.ids[0]] = live
                row = stream.logged
            if row is None and live.stopped_by is not None:  # stopped: what was written stays, unlogged
                await self.show(post, channel, character, text, final=True, state="stopped")
                return None
            post = await self.show(post, channel, character, row["text"] if row else text, final=True)
            if row:
                self.tables.map_messages(post.ids, row["id"], channel.id)
            return row
        except GeneratorBusy as busy:
            if on_busy is not None:
                await on_busy()
            await tell(f"{character.name} has a queue of people waiting right now — please retry in "
                       f"{busy.retry_after} s.")
        except LookupError as error:  # nothing to regenerate, a character uninstalled meanwhile
            await tell(str(error) if isinstance(error, UnknownCharacter) else f"{error}.")
        except Exception:
            log.exception("reply of %s in channel %s failed", character.id, channel.id)
            await tell(f"Something went wrong while {character.name} was answering; the error was logged. "
                       "Please try again.")
        finally:
            if stream is not None:
                self._streams.discard(stream)
            for key in [key for key, value in self.live.items() if value is live]:
                del self.live[key]
        return None

    async def show(self, post: Post, channel, character, text: str, final: bool = False,
                   state: str | None = None) -> Post:
        """Show text in a post; a webhook deleted meanwhile is recreated once."""
        try:
            await post.show(text, final, state)
            return post
        except discord.NotFound:
            if not getattr(post.voice, "via_webhook", False):
                raise
            self.speaker.forget(channel, character)
            post = Post(await self.speaker.voice(channel, character), post.controls)
            await post.show(text, final, state)
            return post

    # --- greetings, reactions, alerts ------------------------------------------------------

    async def greet(self, channel, character, user) -> dict | None:
        """Post (and log) the character's first message in a channel whose conversation is new."""
        turn = self.turn(channel, user, "", character)
        row = await asyncio.to_thread(self.engine.log_greeting, turn, character)
        if row is None:
            return None
        post = await self.show(Post(await self.speaker.voice(channel, character)), channel, character,
                               row["text"], final=True)
        self.tables.map_messages(post.ids, row["id"], channel.id)
        return row

    def _feedback_target(self, payload) -> tuple[dict, int] | None:
        if self.user and payload.user_id == self.user.id:
            return None
        if payload.member is not None and payload.member.bot:
            return None
        value = FEEDBACK.get(_SKIN_TONES.sub("", str(payload.emoji)))
        if value is None:
            return None
        row = self.tables.logged_message(payload.message_id)
        if not row or row["role"] != "assistant":
            return None
        return row, value

    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        target = self._feedback_target(payload)
        if target:
            row, value = target
            uid = user_key(payload.user_id)
            self.engine.store.ensure_user(uid, getattr(payload.member, "display_name", ""), PLATFORM)
            self.engine.store.add_feedback(row["id"], uid, value, source="discord:reaction")

    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        target = self._feedback_target(payload)
        if target:
            row, value = target
            uid = user_key(payload.user_id)
            current = self.engine.store.query("select value from feedback where message_id = ? and user_id = ?",
                                              [row["id"], uid])
            if current and current[0]["value"] == value:
                self.engine.store.remove_feedback(row["id"], uid)

    async def post_alert(self, character, report) -> None:
        """Post an audit alert to the configured admin channel."""
        channel = self.get_channel(self.config.admin_channel) if self.config.admin_channel else None
        if channel is None:
            log.warning("audit alert for %s, but [discord] admin_channel is not set or not visible", character)
            return
        name = getattr(character, "name", None) or str(character)
        embed = discord.Embed(title=f"Audit alert: {name}", colour=discord.Colour.red(),
                              description="A live audit found this character under its alignment threshold.")
        for field in ("version", "aligned", "minor", "misaligned", "leakage"):
            value = getattr(report, field, None)
            if value is not None:
                shown = f"{value:.0%}" if isinstance(value, float) and field != "version" else str(value)
                embed.add_field(name=field.capitalize(), value=shown)
        html = getattr(report, "report_html", None)
        if html:
            embed.set_footer(text=f"Report: {html}")
        await channel.send(embed=embed, allowed_mentions=NO_MENTIONS)


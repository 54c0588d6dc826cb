"""Slash commands: /character ..., /regenerate, /personae ... (privacy and admin)."""

from __future__ import annotations

import asyncio
import io
import logging

import discord
from discord import app_commands

from plugins.discord.identity import PLATFORM, user_key
from plugins.discord.instructions import MAX_NOTE_DEPTH, MAX_PROMPT_CHARS
from plugins.discord.replies import NO_MENTIONS
from runtime.audit import run_audit
from runtime.audit.report import latest_report_files
from runtime.jobs import add_schedule
from runtime.plugins import ForgetIncomplete, forget_user
from runtime.training import retrain  # torch and friends load only when an admin asks

log = logging.getLogger("plugins.discord")


class PersonaeTree(app_commands.CommandTree):
    """The command tree: refuses servers and channels outside the allow-lists; errors get an answer."""

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        channel = interaction.channel
        if channel is not None and not self.client.allowed(channel):
            await interaction.response.send_message("Personae is not enabled in this server or channel.",
                                                    ephemeral=True)
            return False
        return True

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        log.error("command %s failed", interaction.command and interaction.command.qualified_name,
                  exc_info=error)
        text = "Something went wrong with that command; the error was logged."
        await respond(interaction, text)


async def respond(interaction: discord.Interaction, text: str = "", ephemeral: bool = True, **extra) -> None:
    """Answer an interaction whether or not it was already answered or deferred."""
    content = text or None  # an embed alone needs no text
    if interaction.response.is_done():
        await interaction.followup.send(content, ephemeral=ephemeral, allowed_mentions=NO_MENTIONS, **extra)
    else:
        await interaction.response.send_message(content, ephemeral=ephemeral, allowed_mentions=NO_MENTIONS,
                                                **extra)


def is_admin(bot, interaction: discord.Interaction, permission: str) -> bool:
    """A configured admin user or role, or someone holding `permission` where they ran the command."""
    user = interaction.user
    if user.id in bot.config.admin_users:
        return True
    if isinstance(user, discord.Member):
        if any(role.id in bot.config.admin_roles for role in user.roles):
            return True
        return bool(getattr(interaction.permissions, permission, False))
    return False


def binding_refusal(bot, interaction: discord.Interaction, action: str, in_dms: str) -> str | None:
    """Why this user can't bind or unbind characters where they are, or None if they can."""
    if interaction.guild is None:
        return in_dms
    if not is_admin(bot, interaction, "manage_channels"):
        return f"{action} characters needs the Manage Channels permission (or a configured admin role)."
    return None


FRACTIONS = {"aligned", "minor", "misaligned", "leakage"}


def summary(result, limit: int = 1800) -> str:
    """A short text for whatever an admin job returned (its summary() if it has one)."""
    if result is None:
        return "done."
    value = getattr(result, "summary", None)
    value = value() if callable(value) else value
    value = result if value is None else value
    if isinstance(value, dict):
        text = ", ".join(f"{key} {val:.0%}" if key in FRACTIONS and isinstance(val, (int, float)) else f"{key} {val}"
                         for key, val in value.items())
    else:
        text = str(value)
    return text[:limit]


def report_files(settings, character_id: str) -> list:
    """The newest audit's plots as Discord attachments."""
    try:
        paths = [p for p in latest_report_files(settings, character_id) if str(p).endswith(".png")]
    except Exception as error:  # plots are a bonus: the numbers were already answered
        log.warning("audit plots of %s: %s", character_id, error)
        return []
    return [discord.File(str(p), filename=p.name) for p in paths[:4] if p.stat().st_size < 8_000_000]


# --- admin jobs: minutes of work, run in a worker thread by the commands below ---------------------


def retrain_character(engine, character):
    """Retrain now: curate, train, gate, promote or reject."""
    return retrain(engine, character.id)


def audit_character(engine, character):
    """A persona audit of the active version."""
    return run_audit(engine, character.id, progress=False)


def schedule_character(engine, character, cron: str):
    """Retrain on a cron schedule (run by `personae serve`)."""
    return add_schedule(engine.settings, character.id, cron)


async def sync(bot) -> None:
    """Register the slash commands: per allowed server (instant) or globally."""
    if bot.config.allowed_guilds:
        for guild_id in bot.config.allowed_guilds:
            guild = discord.Object(guild_id)
            bot.tree.copy_global_to(guild=guild)
            await bot.tree.sync(guild=guild)
    else:
        await bot.tree.sync()


def install(bot) -> None:
    """Add every command to the bot's tree."""
    engine = bot.engine
    catalog = engine.catalog

    async def complete_names(interaction: discord.Interaction, current: str):
        current = current.lower()
        return [app_commands.Choice(name=c.name[:100], value=c.id) for c in catalog.characters.values()
                if current in c.name.lower() or current in c.id][:25]

    def find(name: str):
        try:
            return catalog.get(name)
        except KeyError:
            return None

    unknown = "No character is called {!r}. Known characters: {}."

    character = app_commands.Group(name="character", description="The characters who talk here")

    @character.command(name="set", description="Bind a character to this channel or thread")
    @app_commands.describe(name="The character's name")
    @app_commands.autocomplete(name=complete_names)
    async def character_set(interaction: discord.Interaction, name: str):
        refusal = binding_refusal(bot, interaction, "Binding", "In DMs, use /character use NAME.")
        if refusal:
            return await respond(interaction, refusal)
        found = find(name)
        if found is None:
            return await respond(interaction, unknown.format(name, ", ".join(catalog.names())))
        channel = interaction.channel
        engine.store.bind(PLATFORM, str(channel.id), found.id)
        others = [c for c in engine.store.bound_characters(PLATFORM, str(channel.id)) if c != found.id]
        text = f"**{found.name}** now talks in {channel.mention}."
        if others:
            text += (f" Also here: {', '.join(others)} — address one by name or reply to its message; "
                     f"unaddressed messages are answered by: {bot.config.answer}.")
        await respond(interaction, text, ephemeral=False)
        if bot.config.greet:
            await bot.greet(channel, found, interaction.user)

    @character.command(name="remove", description="Unbind a character from this channel or thread")
    @app_commands.describe(name="The character's name")
    @app_commands.autocomplete(name=complete_names)
    async def character_remove(interaction: discord.Interaction, name: str):
        refusal = binding_refusal(bot, interaction, "Unbinding",
                                  "In DMs, use /character use NAME to switch characters.")
        if refusal:
            return await respond(interaction, refusal)
        found = find(name)
        removed = engine.store.unbind(PLATFORM, str(interaction.channel.id), found.id if found else name)
        await respond(interaction, f"{found.name if found else name} no longer talks here." if removed
                      else f"{name} was not bound here.", ephemeral=not removed)

    @character.command(name="list", description="Characters bound here, and every character available")
    async def character_list(interaction: discord.Interaction):
        here = bot.bound(interaction.channel, interaction.user) if interaction.channel else []
        lines = ["**Here:** " + (", ".join(c.name for c in here) or "nobody — an admin can use /character set")]
        lines.append("**Available:** " + ", ".join(f"{c.name} (`{c.id}`)" for c in catalog.characters.values()))
        await respond(interaction, "\n".join(lines))

    @character.command(name="info", description="A character's card: avatar, description, first message")
    @app_commands.describe(name="The character's name")
    @app_commands.autocomplete(name=complete_names)
    async def character_info(interaction: discord.Interaction, name: str):
        found = find(name)
        if found is None:
            return await respond(interaction, unknown.format(name, ", ".join(catalog.names())))
        user = getattr(interaction.user, "display_name", "you")
        embed = discord.Embed(title=found.name, description=(found.description or "—")[:4000],
                              colour=discord.Colour.blurple())
        greeting = engine.greeting(found, user)
        if greeting:
            embed.add_field(name="First message", value=greeting[:1024], inline=False)
        addition = bot.channel_prompts.for_channel(interaction.channel) if interaction.channel else None
        if addition:
            embed.add_field(name="This channel's prompt addition", value=addition["text"][:1024], inline=False)
        embed.set_footer(text=f"id: {found.id}")
        extra = {}
        if found.avatar_png:
            embed.set_thumbnail(url="attachment://avatar.png")
            extra["file"] = discord.File(io.BytesIO(found.avatar_png), filename="avatar.png")
        await respond(interaction, embed=embed, ephemeral=False, **extra)

    @character.command(name="prompt", description="Admin: add instructions to every character's prompt in this "
                                                  "channel (leave empty to clear)")
    @app_commands.describe(text=f"Up to {MAX_PROMPT_CHARS} characters; {{{{char}}}} and {{{{user}}}} work")
    async def character_prompt(interaction: discord.Interaction, text: str | None = None):
        await set_channel_text(interaction, text, "prompt addition", "Prompt additions", "prompt",
                               bot.tables.clear_channel_prompt, bot.tables.set_channel_prompt,
                               lambda mention, text: f"Characters in {mention} now also follow: {text}")

    @character.command(name="note", description="Admin: an author's note for this channel, placed a few messages "
                                                "from the end of every prompt (leave empty to clear)")
    @app_commands.describe(text=f"Up to {MAX_PROMPT_CHARS} characters; {{{{char}}}} and {{{{user}}}} work",
                           depth="How many messages from the end it goes (0: after the last; default 4)")
    async def character_note(interaction: discord.Interaction, text: str | None = None,
                             depth: app_commands.Range[int, 0, MAX_NOTE_DEPTH] = 4):
        await set_channel_text(interaction, text, "author's note", "Author's notes", "author's note",
                               bot.tables.clear_channel_note,
                               lambda channel_id, text: bot.tables.set_channel_note(channel_id, text, depth),
                               lambda mention, text: f"Characters in {mention} now get this author's note {depth} "
                                                     f"messages from the end: {text}")

    async def set_channel_text(interaction, text, what, plural, needs, clear, store, done):
        """An admin sets (or, with no text, clears) one of a channel's texts: its prompt addition or author's note."""
        if interaction.guild is None:
            return await respond(interaction, f"{plural} are for server channels.")
        if not is_admin(bot, interaction, "manage_channels"):
            return await respond(interaction, f"Changing this channel's {needs} needs the Manage Channels permission "
                                              "(or a configured admin role or user).")
        channel = interaction.channel
        text = (text or "").strip()
        if len(text) > MAX_PROMPT_CHARS:
            return await respond(interaction, f"That {what} is {len(text)} characters long; the limit is "
                                              f"{MAX_PROMPT_CHARS}. Please shorten it.")
        if not text:
            previous = clear(channel.id)
            return await respond(interaction, f"Cleared the {what} of {channel.mention} (it was: "
                                              f"{previous['text']})." if previous
                                 else f"{channel.mention} has no {what} of its own.",
                                 ephemeral=not previous)
        store(channel.id, text)
        await respond(interaction, done(channel.mention, text), ephemeral=False)

    @character.command(name="use", description="Choose the character you talk to in DMs")
    @app_commands.describe(name="The character's name")
    @app_commands.autocomplete(name=complete_names)
    async def character_use(interaction: discord.Interaction, name: str):
        if interaction.guild is not None:
            return await respond(interaction, "/character use is for DMs; in servers an admin uses /character set.")
        found = find(name)
        if found is None:
            return await respond(interaction, unknown.format(name, ", ".join(catalog.names())))
        channel, uid = str(interaction.channel.id), user_key(interaction.user)
        engine.store.unbind(PLATFORM, channel, None, uid)
        engine.store.bind(PLATFORM, channel, found.id, uid)
        await respond(interaction, f"You're now talking with **{found.name}**.")
        if bot.config.greet:
            await bot.greet(interaction.channel, found, interaction.user)

    @app_commands.command(name="regenerate", description="Re-roll the last reply here (both are kept)")
    @app_commands.describe(name="Whose reply (default: the latest one here)")
    @app_commands.autocomplete(name=complete_names)
    async def regenerate(interaction: discord.Interaction, name: str | None = None):
        channel = interaction.channel
        if name:
            found = find(name)
        else:
            rows = engine.store.query(
                "select character from messages where platform = ? and channel = ? and role = 'assistant' "
                "order by id desc limit 1", [PLATFORM, str(channel.id)])
            found = find(rows[0]["character"]) if rows else None
        if found is None:
            return await respond(interaction, "There is no reply to regenerate here yet.")
        await bot.reroll(interaction, found)

    personae = app_commands.Group(name="personae", description="Your data, and admin commands")

    @personae.command(name="forget-me", description="Delete your logged messages and feedback")
    async def forget_me(interaction: discord.Interaction):
        try:
            counts = await asyncio.to_thread(forget_user, engine.store, user_key(interaction.user), engine.pm)
        except ForgetIncomplete as error:
            log.error("forget-me: %s", error)
            return await respond(interaction, "Your logged messages and feedback were deleted, but a plugin failed "
                                              "to delete its own data about you; the admins were told. Please run "
                                              "/personae forget-me again later.")
        await asyncio.to_thread(bot.tables.drop_orphans)
        await respond(interaction, f"Done: deleted {counts['messages']} messages and {counts['feedback']} "
                                   "feedback entries. Your messages are also excluded from training from now on.")

    @personae.command(name="opt-out", description="Never use your messages to train characters")
    async def opt_out(interaction: discord.Interaction):
        engine.store.set_opt_out(user_key(interaction.user), True)
        await respond(interaction, "Your messages will not be used for training. (/personae opt-in to undo)")

    @personae.command(name="opt-in", description="Allow your messages to be used to train characters")
    async def opt_in(interaction: discord.Interaction):
        engine.store.set_opt_out(user_key(interaction.user), False)
        await respond(interaction, "Thanks — your conversations may now help train the characters.")

    async def admin_job(interaction, name, what, call, attach=None):
        if not is_admin(bot, interaction, "manage_guild"):
            return await respond(interaction, f"{what} needs the Manage Server permission (or a configured "
                                              "admin role or user).")
        found = find(name)
        if found is None:
            return await respond(interaction, unknown.format(name, ", ".join(catalog.names())))
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            # Training and audits take minutes: a worker thread keeps the bot answering meanwhile.
            result = await asyncio.to_thread(call, found)
        except Exception as error:
            log.exception("%s of %s failed", what, found.id)
            return await respond(interaction, f"{what} of {found.name} failed: {error}")
        files = await asyncio.to_thread(attach, found) if attach else []
        await respond(interaction, f"{what} of {found.name}: {summary(result)}", **({"files": files} if files else {}))

    @personae.command(name="retrain", description="Admin: retrain a character from its conversations now")
    @app_commands.autocomplete(name=complete_names)
    async def retrain(interaction: discord.Interaction, name: str):
        await admin_job(interaction, name, "Retraining", lambda found: retrain_character(engine, found))

    @personae.command(name="audit", description="Admin: run a persona audit of a character")
    @app_commands.autocomplete(name=complete_names)
    async def audit(interaction: discord.Interaction, name: str):
        await admin_job(interaction, name, "The audit", lambda found: audit_character(engine, found),
                        attach=lambda found: report_files(engine.settings, found.id))

    @personae.command(name="schedule", description="Admin: retrain a character on a cron schedule")
    @app_commands.describe(cron="Cron expression, e.g. '0 4 * * 1' (Mondays 04:00)")
    @app_commands.autocomplete(name=complete_names)
    async def schedule(interaction: discord.Interaction, name: str, cron: str):
        await admin_job(interaction, name, "Scheduling", lambda found: schedule_character(engine, found, cron))

    bot.tree.add_command(character)
    bot.tree.add_command(regenerate)
    bot.tree.add_command(personae)

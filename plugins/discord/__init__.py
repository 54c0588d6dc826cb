"""The Discord platform: characters answer in servers and DMs (started by `personae serve` with DISCORD_TOKEN)."""

from __future__ import annotations

import asyncio
import logging

from runtime.hookspecs import hookimpl

log = logging.getLogger("plugins.discord")


class DiscordPlatform:
    """The platform object `personae serve` runs in a thread."""

    name = "discord"

    def __init__(self):
        self.bot = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def wanted(self, settings, options) -> bool:
        """Serve Discord when a token is in the environment."""
        from plugins.discord.config import token_from_environment

        return bool(token_from_environment())

    def check(self, settings, options) -> list[str]:
        """Problems with the [discord] table and the token, found without connecting."""
        from plugins.discord.config import check, token_from_environment

        return check(settings.plugin_settings("discord"), token_from_environment())

    def run(self, engine, settings, options) -> None:
        """Connect and serve until stop() (blocking; `personae serve` calls it in a thread)."""
        import discord

        from plugins.discord import redact
        from plugins.discord.config import parse_config, token_from_environment

        token = token_from_environment()
        config, problems = parse_config(settings.plugin_settings("discord"))
        if problems:
            raise ValueError("; ".join(problems))
        root = logging.getLogger()
        if not root.handlers:
            discord.utils.setup_logging(level=logging.INFO)
        redactor = redact.install(token)
        try:
            asyncio.run(self._serve(engine, config, token))
        except discord.LoginFailure:
            log.error("Discord refused the token in $DISCORD_TOKEN: reset it in the developer portal "
                      "(Applications → your app → Bot → Reset Token) and set it again")
        except discord.PrivilegedIntentsRequired:
            log.error("Discord refused the Message Content intent: enable it in the developer portal "
                      "(Applications → your app → Bot → Privileged Gateway Intents → Message Content)")
        finally:
            redact.uninstall(redactor)
            self.bot = self.loop = None

    async def _serve(self, engine, config, token: str) -> None:
        from plugins.discord.bot import PersonaeBot

        self.loop = asyncio.get_running_loop()
        self.bot = PersonaeBot(engine, config)
        async with self.bot:
            await self.bot.start(token)

    def stop(self) -> None:
        """Disconnect (safe to call from any thread, and when not running)."""
        bot, loop = self.bot, self.loop
        if bot is not None and loop is not None and not loop.is_closed():
            future = asyncio.run_coroutine_threadsafe(bot.close(), loop)
            try:
                future.result(timeout=10)
            except Exception as error:  # stopping must not raise: serve is shutting down anyway
                log.warning("closing the Discord connection: %s", error)


platform = DiscordPlatform()


@hookimpl
def register_platforms(register):
    register(platform)


@hookimpl
def audit_alert(character, report):
    """Post audit alerts to the configured admin channel while the bot runs."""
    bot, loop = platform.bot, platform.loop
    if bot is None or loop is None or loop.is_closed():
        return
    # Called from the audit's thread (scheduler or /personae audit worker): hand it to the bot's loop.
    future = asyncio.run_coroutine_threadsafe(bot.post_alert(character, report), loop)
    future.add_done_callback(_report_failure)


def _report_failure(future) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("could not post the audit alert: %s", future.exception())

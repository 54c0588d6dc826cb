"""A logging filter that keeps the bot token out of every log line."""

from __future__ import annotations

import logging

MASK = "[DISCORD_TOKEN]"


class TokenRedactor(logging.Filter):
    """Replace the token in a record's message and arguments before any handler formats it."""

    def __init__(self, token: str):
        super().__init__()
        self.token = token

    def _clean(self, value):
        if isinstance(value, str) and self.token in value:
            return value.replace(self.token, MASK)
        if not isinstance(value, (int, float, type(None))) and self.token in repr(value):
            return repr(value).replace(self.token, MASK)
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.token:
            return True
        record.msg = self._clean(record.msg)
        if isinstance(record.args, dict):
            record.args = {key: self._clean(value) for key, value in record.args.items()}
        elif record.args:
            record.args = tuple(self._clean(value) for value in record.args)
        if record.exc_info and record.exc_info[1] is not None and self.token in str(record.exc_info[1]):
            # Tracebacks are formatted later from exc_info; pre-format them with the token masked.
            record.exc_text = logging.Formatter().formatException(record.exc_info).replace(self.token, MASK)
            record.exc_info = None
        return True


def install(token: str) -> TokenRedactor:
    """Attach the redactor to the root handlers and the loggers that could see the token."""
    redactor = TokenRedactor(token)
    for handler in logging.getLogger().handlers:
        handler.addFilter(redactor)
    # Logger-level filters cover records that reach handlers added later below these loggers.
    for name in ("discord", "discord.http", "discord.client", "discord.gateway", "plugins.discord", "aiohttp"):
        logging.getLogger(name).addFilter(redactor)
    return redactor


def uninstall(redactor: TokenRedactor) -> None:
    """Remove a redactor installed by install()."""
    for handler in logging.getLogger().handlers:
        handler.removeFilter(redactor)
    for name in ("discord", "discord.http", "discord.client", "discord.gateway", "plugins.discord", "aiohttp"):
        logging.getLogger(name).removeFilter(redactor)

"""A logging filter that keeps the bot token and webhook tokens out of every log line."""

from __future__ import annotations

import logging
import re

MASK = "[DISCORD_TOKEN]"
WEBHOOK_MASK = "[WEBHOOK_TOKEN]"
# A webhook's token is the secret half of its URL: /webhooks/ID/TOKEN (discord.py logs these at DEBUG).
_WEBHOOK_URL = re.compile(r"(/webhooks/\d+/)([A-Za-z0-9_.\-]{8,})")
LOGGERS = ("discord", "discord.http", "discord.client", "discord.gateway", "discord.webhook",
           "discord.webhook.async_", "plugins.discord", "plugins.discord.replies", "aiohttp")


class TokenRedactor(logging.Filter):
    """Replace the token in a record's message and arguments before any handler formats it."""

    def __init__(self, token: str):
        super().__init__()
        self.token = token

    def _mask(self, text: str) -> str:
        if self.token:
            text = text.replace(self.token, MASK)
        return _WEBHOOK_URL.sub(lambda m: m.group(1) + WEBHOOK_MASK, text)

    def _clean(self, value):
        if isinstance(value, str):
            return self._mask(value)
        if not isinstance(value, (int, float, type(None))):
            text = repr(value)
            masked = self._mask(text)
            return masked if masked != text else value
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._clean(record.msg)
        if isinstance(record.args, dict):
            record.args = {key: self._clean(value) for key, value in record.args.items()}
        elif record.args:
            record.args = tuple(self._clean(value) for value in record.args)
        if record.exc_info and record.exc_info[1] is not None:
            text = str(record.exc_info[1])
            if self._mask(text) != text:
                # Tracebacks are formatted later from exc_info; pre-format them with the tokens masked.
                record.exc_text = self._mask(logging.Formatter().formatException(record.exc_info))
                record.exc_info = None
        return True


def install(token: str) -> TokenRedactor:
    """Attach the redactor to the root handlers and the loggers that could see the token."""
    redactor = TokenRedactor(token)
    for handler in logging.getLogger().handlers:
        handler.addFilter(redactor)
    # Logger-level filters cover records that reach handlers added later below these loggers.
    for name in LOGGERS:
        logging.getLogger(name).addFilter(redactor)
    return redactor


def uninstall(redactor: TokenRedactor) -> None:
    """Remove a redactor installed by install()."""
    for handler in logging.getLogger().handlers:
        handler.removeFilter(redactor)
    for name in LOGGERS:
        logging.getLogger(name).removeFilter(redactor)

"""The [discord] table of personae.toml, validated without connecting; the token from the environment."""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass, field, fields

TOKEN_VARIABLE = "DISCORD_TOKEN"
ANSWER_MODES = ("first", "all", "random", "none")


@dataclass
class DiscordConfig:
    """Settings of the Discord platform (keys of the [discord] table)."""

    allowed_guilds: list = field(default_factory=list, metadata={"ids": True,
                                 "help": "Server ids the bot serves; empty = every server it is in."})
    allowed_channels: list = field(default_factory=list, metadata={"ids": True,
                                   "help": "Channel ids it answers in (threads follow their parent); empty = all."})
    admin_roles: list = field(default_factory=list, metadata={"ids": True,
                              "help": "Role ids whose members may use admin commands."})
    admin_users: list = field(default_factory=list, metadata={"ids": True,
                              "help": "User ids who may use admin commands everywhere."})
    admin_channel: int = field(default=0, metadata={"help": "Channel id for audit alerts and set-up notices."})
    answer: str = field(default="first", metadata={
        "help": "Who answers a message that names no character: first | all | random | none."})
    streaming: bool = field(default=True, metadata={
        "help": "Edit the reply about once a second as it is written; false = send when done."})
    stream_interval: float = field(default=1.0, metadata={"help": "Seconds between streaming edits."})
    greet: bool = field(default=True, metadata={"help": "Post the character's first message when bound."})
    user_rate: int = field(default=6, metadata={"help": "Messages per user per minute (0 = no limit)."})
    channel_rate: int = field(default=20, metadata={"help": "Messages per channel per minute (0 = no limit)."})
    max_input_chars: int = field(default=2000, metadata={"help": "Longer messages get an error, not a reply."})
    sync_commands: bool = field(default=True, metadata={"help": "Register the slash commands at start-up."})
    reply_chain_depth: int = field(default=12, metadata={
        "help": "Messages of a reply chain read back when someone replies to an older message (0 = off)."})
    attachment_bytes: int = field(default=20000, metadata={
        "help": "Largest text file attached to a message that is read as part of it, in bytes."})
    buttons: bool = field(default=True, metadata={"help": "Stop and Re-roll buttons under a character's reply."})
    temperature: float | None = field(default=None, metadata={"help": "Sampling temperature on Discord."})
    max_new_tokens: int | None = field(default=None, metadata={"help": "Longest reply on Discord, in tokens."})

    @property
    def sampling(self) -> dict:
        """Per-request sampling overrides for the engine."""
        return {"temperature": self.temperature, "max_new_tokens": self.max_new_tokens}


def _kind(f) -> type:
    return {"list": list, "int": int, "str": str, "bool": bool, "float": float}.get(
        str(f.type).split(" ")[0].split("|")[0].strip(), str)


def parse_config(table: dict | None) -> tuple[DiscordConfig, list[str]]:
    """Build the config from a [discord] table; return it with every problem found (one line each)."""
    config, problems = DiscordConfig(), []
    known = {f.name: f for f in fields(DiscordConfig)}
    for key, value in (table or {}).items():
        f = known.get(key)
        if f is None:
            problems.append(f"[discord] unknown key '{key}' (known: {', '.join(sorted(known))})")
            continue
        kind = _kind(f)
        if f.metadata.get("ids"):
            values = value if isinstance(value, list) else [value]
            ids = []
            for item in values:
                if isinstance(item, bool) or not re.fullmatch(r"\d{15,21}", str(item).strip()):
                    problems.append(f"[discord] {key}: {item!r} is not a Discord id (a 17-20 digit number; "
                                    "copy it with Developer Mode on)")
                else:
                    ids.append(int(str(item).strip()))
            setattr(config, key, ids)
        elif key == "admin_channel":
            if isinstance(value, bool) or not re.fullmatch(r"\d{15,21}", str(value).strip()):
                problems.append(f"[discord] admin_channel: {value!r} is not a Discord channel id")
            else:
                config.admin_channel = int(str(value).strip())
        elif kind is bool:
            if not isinstance(value, bool):
                problems.append(f"[discord] {key}: expected true or false, got {value!r}")
            else:
                setattr(config, key, value)
        elif kind in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (
                    kind is int and not float(value).is_integer()):
                problems.append(f"[discord] {key}: expected a non-negative {kind.__name__}, got {value!r}")
            else:
                setattr(config, key, kind(value))
        else:
            setattr(config, key, str(value))
    if config.answer not in ANSWER_MODES:
        problems.append(f"[discord] answer: {config.answer!r} is not one of {', '.join(ANSWER_MODES)}")
        config.answer = "first"
    if config.max_input_chars < 1:
        problems.append("[discord] max_input_chars must be at least 1")
        config.max_input_chars = 2000
    return config, problems


def token_from_environment() -> str:
    """The bot token; only ever read from $DISCORD_TOKEN, never from a file."""
    return os.environ.get(TOKEN_VARIABLE, "").strip()


def token_problems(token: str) -> list[str]:
    """Whether a token looks like a Discord bot token (three dot-separated parts, an id first)."""
    if not token:
        return [f"${TOKEN_VARIABLE} is empty; copy the bot token from the developer portal (Bot → Reset Token)"]
    parts = token.split(".")
    hint = f"${TOKEN_VARIABLE} does not look like a bot token (expected three parts separated by dots)"
    if token.lower().startswith("bot "):
        return [f"${TOKEN_VARIABLE} must be the bare token, without the 'Bot ' prefix"]
    if len(parts) != 3 or not all(parts):
        return [hint]
    try:
        padded = parts[0] + "=" * (-len(parts[0]) % 4)
        if not base64.urlsafe_b64decode(padded).decode().isdigit():
            return [hint + "; its first part is not a base64 user id"]
    except (ValueError, UnicodeDecodeError):
        return [hint + "; its first part is not base64"]
    return []


def check(table: dict | None, token: str) -> list[str]:
    """Every problem with the Discord set-up, found without connecting."""
    import importlib.util

    problems = parse_config(table)[1] + token_problems(token)
    if importlib.util.find_spec("discord") is None:
        problems.append("discord.py is not installed: pip install 'discord.py>=2.4'")
    return problems

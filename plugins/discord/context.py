"""What a Discord message brings to the prompt besides its text: the reply chain it continues, its text files."""

from __future__ import annotations

import logging
from pathlib import PurePosixPath

import discord

from plugins.discord.identity import PLATFORM, user_key

log = logging.getLogger("plugins.discord")

# Files read as text whatever their content type says (Discord often sends none, or application/octet-stream).
TEXT_SUFFIXES = {
    ".txt", ".md", ".markdown", ".rst", ".py", ".json", ".jsonl", ".yaml", ".yml", ".toml", ".ini", ".cfg",
    ".csv", ".tsv", ".log", ".xml", ".html", ".htm", ".css", ".js", ".ts", ".jsx", ".tsx", ".sh", ".bat",
    ".c", ".h", ".cpp", ".hpp", ".cs", ".java", ".kt", ".go", ".rs", ".rb", ".php", ".lua", ".sql", ".srt",
}
TEXT_TYPES = {"application/json", "application/xml", "application/x-yaml", "application/toml",
              "application/javascript", "application/x-sh"}


def is_text_file(attachment: discord.Attachment) -> bool:
    """Whether an attachment is a text file (by content type, or by its name when the type says nothing)."""
    kind = (attachment.content_type or "").split(";")[0].strip().lower()
    return kind.startswith("text/") or kind in TEXT_TYPES or \
        PurePosixPath(attachment.filename.lower()).suffix in TEXT_SUFFIXES


async def read_attachments(message: discord.Message, max_bytes: int,
                           max_chars: int) -> tuple[list[str], list[str]]:
    """(the text files as prompt text, one note per file not read or cut): UTF-8, bad bytes replaced.

    All files together give at most `max_chars` characters, so that a big file cannot push the
    character's card out of the prompt.
    """
    texts, skipped = [], []
    for attachment in message.attachments:
        name = attachment.filename
        if not is_text_file(attachment):
            skipped.append(f"{name} (only text files are read)")
            continue
        if attachment.size > max_bytes:
            skipped.append(f"{name} ({attachment.size:,} bytes; files of at most {max_bytes:,} bytes are read)")
            continue
        try:
            data = await attachment.read()
        except discord.HTTPException as error:
            log.warning("could not download attachment %s of message %s: %s", name, message.id, error)
            skipped.append(f"{name} (it could not be downloaded)")
            continue
        # A file can be bigger than Discord announced it; never read more than the limit.
        text = data[:max_bytes].decode("utf-8", errors="replace").replace("\r\n", "\n").strip()
        room = max_chars - sum(len(t) for t in texts)
        if room <= 0:
            skipped.append(f"{name} (the files before it filled the room for attachments)")
            continue
        if len(text) > room:
            text = text[:room] + f"\n[… the rest of {name} was cut]"
            skipped.append(f"{name} (cut after {room:,} characters, all the room a prompt has for files)")
        texts.append(f"[file {name}]\n{text}\n[end of {name}]")
    return texts, skipped


def with_attachments(text: str, files: list[str], skipped: list[str]) -> str:
    """The user's message as the model reads it: their files first, their words last (kept if cut)."""
    notes = [f"[{note.split(' (')[0]} was attached but not read]" for note in skipped if " (cut after " not in note]
    return "\n\n".join([*files, *notes, text]).strip()


async def find_message(bot, channel, message_id: int, resolved=None) -> discord.Message | None:
    """A message of this channel: the one the gateway resolved, the client's cache, or fetched."""
    if isinstance(resolved, discord.Message) and resolved.id == message_id:
        return resolved
    cached = discord.utils.get(bot.cached_messages, id=message_id)
    if cached is not None:
        return cached
    try:
        return await channel.fetch_message(message_id)
    except (discord.NotFound, discord.Forbidden):
        return None  # deleted, or out of the bot's sight: the chain ends there
    except discord.HTTPException as error:
        log.warning("could not fetch message %s of channel %s: %s", message_id, channel.id, error)
        return None


def as_history(bot, row: dict | None, found: discord.Message | None, character, author) -> dict | None:
    """One earlier message as a role/content dict seen by `character` answering `author` (None: leave it out)."""
    if row is not None:
        if row["role"] == "assistant":
            if row["character"] == character.id:
                return {"role": "assistant", "content": row["text"]}
            try:
                name = bot.engine.catalog.get(row["character"]).name
            except KeyError:
                name = row["character"]
            return {"role": "user", "content": f"{name}: {row['text']}"}
        speaker = "" if row["user_id"] == user_key(author) else f"{row['user_name']}: "
        return {"role": "user", "content": speaker + row["text"]}
    if found is None or (bot.user and found.author.id == bot.user.id):
        return None  # the bot's own unlogged messages are notices and errors, not conversation
    text = found.clean_content.strip()
    if found.attachments:
        text = (text + "\n" + " ".join(f"[attached: {a.filename}]" for a in found.attachments)).strip()
    if not text:
        return None
    speaker = "" if found.author.id == author.id else f"{found.author.display_name}: "
    return {"role": "user", "content": speaker + text}


async def reply_chain(bot, message: discord.Message, character, hops: int) -> list[tuple[dict | None, dict]]:
    """The thread a reply continues, oldest first, as (logged row or None, role/content) pairs.

    Walks up Discord's reply references; a character's reply (never a Discord reply itself) continues
    at the message it answered, from the log. At most `hops` messages; a deleted message ends the chain.
    """
    chain: list[tuple[dict | None, dict]] = []
    reference = message.reference
    next_id = reference.message_id if reference and reference.channel_id == message.channel.id else None
    resolved = reference.resolved if reference else None
    seen: set[int] = set()
    while next_id and len(seen) < hops and next_id not in seen:
        seen.add(next_id)
        row = bot.tables.logged_message(next_id)
        found = await find_message(bot, message.channel, next_id, resolved)
        resolved = None
        if row is None and found is None:
            break
        entry = as_history(bot, row, found, character, message.author)
        if entry is not None:
            chain.append((row, entry))
        upward = found.reference if found is not None else None
        if upward and upward.message_id and upward.channel_id == message.channel.id:
            next_id, resolved = upward.message_id, upward.resolved
        elif row is not None and row.get("reply_to"):
            answered = bot.engine.store.message(row["reply_to"])
            pmid = (answered or {}).get("platform_message_id")
            next_id = int(pmid) if pmid and pmid.isdigit() else None
        else:
            next_id = None
    return chain[::-1]


async def thread_history(bot, message: discord.Message, character, hops: int,
                         before: int | None = None) -> list[dict] | None:
    """The prompt history for a reply to an older message: the recent log, then the thread it continues.

    None when the message is not a reply, or replies to a message the recent log already holds (then
    the engine reads the log as for any message).
    """
    reference = message.reference
    if hops <= 0 or reference is None or not reference.message_id:
        return None
    store = bot.engine.store
    conversation = store.conversation_id(PLATFORM, str(message.channel.id), character.id)
    recent = store.history(conversation, limit=bot.engine.settings.history_turns, before_id=before)
    replied = bot.tables.logged_message(reference.message_id)
    if replied is not None and any(row["id"] == replied["id"] for row in recent):
        return None
    chain = await reply_chain(bot, message, character, hops)
    if not chain:
        return None
    in_chain = {row["id"] for row, _ in chain if row is not None}
    # The thread goes last, right before the reply to it; the channel's recent talk stays before it.
    return [{"role": row["role"], "content": row["text"]} for row in recent if row["id"] not in in_chain] + \
        [entry for _, entry in chain]


async def reroll_history(bot, channel, character, hops: int) -> list[dict] | None:
    """The history a re-roll of the channel's last reply sees: the thread its message continued, or None (the log)."""
    store = bot.engine.store
    conversation = store.conversation_id(PLATFORM, str(channel.id), character.id)
    last = next((m for m in reversed(store.history(conversation, limit=2)) if m["role"] == "assistant"), None)
    asked = store.message(last["reply_to"]) if last and last.get("reply_to") else None
    pmid = (asked or {}).get("platform_message_id")
    if hops <= 0 or not pmid or not pmid.isdigit():
        return None
    message = await find_message(bot, channel, int(pmid))
    if message is None or message.reference is None:
        return None
    # The log as it was when the message was asked: its own row and the reply being re-rolled are not history.
    return await thread_history(bot, message, character, hops, before=asked["id"])

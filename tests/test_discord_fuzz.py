"""Fuzzed Discord payloads through discord.py's own objects (tests/discord_harness.py): odd text, mentions,
attachments with hostile names and sizes, replies to unknown messages, odd slash-command options. Only clean
answers: no handler traceback, no request the bot should not make, nothing logged half."""

from __future__ import annotations

import asyncio
import logging
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.discord_harness import CHANNEL_ID, DM_CHANNEL_ID, THREAD_ID, running_bot

FAST = {"temperature": 0, "max_new_tokens": 2, "streaming": False, "greet": False, "user_rate": 0,
        "channel_rate": 0}
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=300) | st.sampled_from([
    "", " ", "@everyone", "<@1100000000000000001>", "<@&1200000000000000003>", "Pixel " + "a" * 4500,
    "\u202e\u0000Pixel\u200b", "```" * 50, "||spoiler||" * 40, "Pixel, " + "\n" * 300])
NAMES = st.text(max_size=40) | st.sampled_from(["../../etc/passwd", "a" * 300 + ".txt", "notes.txt\u0000.exe",
                                                "CON", ".txt", "résumé.md"])


@st.composite
def event(draw):
    kind = draw(st.sampled_from(["message", "message", "attachment", "reply", "command"]))
    channel = draw(st.sampled_from([CHANNEL_ID, THREAD_ID, DM_CHANNEL_ID]))
    if kind == "command":
        return kind, channel, (draw(st.sampled_from([("character", "info"), ("character", "set"),
                                                     ("character", "use"), ("regenerate", None)])),
                               draw(TEXT))
    if kind == "attachment":
        return kind, channel, (draw(TEXT), draw(NAMES), draw(st.binary(max_size=300)),
                               draw(st.sampled_from([None, "text/plain", "image/png", "text/plain; charset=x"])),
                               draw(st.sampled_from([None, 0, -1, 2**40])))
    return kind, channel, draw(TEXT)


async def play(h, events):
    for kind, channel, data in events:
        if kind == "message":
            await h.message(data, channel_id=channel)
        elif kind == "reply":
            ghost = {"id": "1599999999999999999", "channel_id": str(channel), "author": h.users["bob"],
                     "content": data, "timestamp": "2026-01-01T00:00:00+00:00", "edited_timestamp": None,
                     "tts": False, "mention_everyone": False, "mentions": [], "mention_roles": [], "attachments": [],
                     "embeds": [], "pinned": False, "type": 0, "flags": 0, "components": []}
            await h.message("Pixel? " + data, channel_id=channel if channel != DM_CHANNEL_ID else CHANNEL_ID,
                            reply_to=ghost)
        elif kind == "attachment":
            text, name, blob, content_type, size = data
            attachment = h.attachment(name or "x.txt", blob, content_type, size)
            await h.message(text, channel_id=channel, attachments=[attachment])
        else:
            (command, sub), value = data
            options = {"name": value} if command != "regenerate" or value else {}
            await h.command(command, sub, channel_id=channel, **options) if sub else \
                await h.command(command, channel_id=channel, **options)


@settings(max_examples=12 if not os.environ.get("PERSONAE_STRESS") else 150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(events=st.lists(event(), min_size=1, max_size=6))
def test_fuzzed_discord_payloads_get_clean_answers(make_engine, tiny_base, caplog, events):
    engine = make_engine(tiny_base)
    engine.store.bind("discord", str(CHANNEL_ID), "pixel")
    caplog.clear()

    async def main():
        async with running_bot(engine, FAST) as harness:
            await play(harness, events)
            return harness.fake

    with caplog.at_level(logging.WARNING):
        fake = asyncio.run(main())  # running_bot fails on any request the fake Discord cannot answer
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert failures == [], [(r.name, r.getMessage(), r.exc_text) for r in failures]
    for call in fake.calls:  # nobody pinged, whatever the input said
        body = call.json if isinstance(call.json, dict) else {}
        data = body.get("data", body) if call.route.endswith("/callback") else body
        if call.method in ("POST", "PATCH") and "content" in data:
            assert data.get("allowed_mentions", {}).get("parse") == [], call
    # Every logged user message has its reply (nothing half-logged).
    orphans = engine.store.query("select id from messages m where role = 'user' and not exists "
                                 "(select 1 from messages r where r.reply_to = m.id)")
    assert orphans == []

"""Discord hardening: webhook tokens never stored or logged; names Discord refuses for webhooks still get replies."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from tests.discord_harness import CHANNEL_ID, FakeDiscord, running_bot

FAST = {"temperature": 0, "max_new_tokens": 3, "streaming": False, "greet": False}


def chat_once(engine, text: str, fake: FakeDiscord) -> None:
    async def main():
        async with running_bot(engine, FAST, fake) as harness:
            await harness.message(text)

    asyncio.run(main())


def test_webhook_tokens_are_never_written_to_the_database(make_engine, tiny_base):
    engine = make_engine(tiny_base)
    engine.store.bind("discord", str(CHANNEL_ID), "pixel")
    fake = FakeDiscord()
    chat_once(engine, "Pixel, hello", fake)
    chat_once(engine, "Pixel, again", fake)  # after a restart: the id is remembered, the token fetched again
    tokens = [w["token"] for w in fake.webhooks.values()]
    assert len(tokens) == 1 and len(fake.webhook_sends()) == 2
    creates = [c for c in fake.calls if c.method == "POST" and c.route == "/channels/{id}/webhooks"]
    assert len(creates) == 1
    stored = engine.store.query("select webhook_id, webhook_token from discord_webhooks")
    assert stored == [{"webhook_id": str(next(iter(fake.webhooks))), "webhook_token": ""}]
    engine.store.db.execute("pragma wal_checkpoint(full)")
    database = engine.settings.db_path.read_bytes()
    assert tokens[0].encode() not in database


@pytest.mark.parametrize("name", ["Discord Dan", "Clyde the Clerk", "the dIsCoRd oracle"])
def test_names_discord_refuses_for_webhooks_fall_back_to_plain_messages(make_engine, tiny_base, tmp_path, name):
    engine = make_engine(tiny_base)
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"spec": "chara_card_v2", "spec_version": "2.0",
                                "data": {"name": name, "description": "A helper.", "first_mes": "Hi."}}))
    character = engine.catalog.import_card(card)
    engine.store.bind("discord", str(CHANNEL_ID), character.id)
    fake = FakeDiscord()
    chat_once(engine, "hello there", fake)
    assert fake.webhook_sends() == []  # no webhook tried: Discord would refuse this name every time
    plain = fake.bot_messages(CHANNEL_ID)
    assert len(plain) == 1 and plain[0].json["content"].startswith(f"**{name}**")  # spoken as the bot
    replies = engine.store.query("select id from messages where role = 'assistant' and character = ?",
                                 [character.id])
    mapped = engine.store.query("select message_id from discord_messages")
    assert len(replies) == 1 and [m["message_id"] for m in mapped] == [replies[0]["id"]]


def test_webhook_tokens_are_masked_in_debug_logs(caplog):
    from plugins.discord import redact

    url = "https://discord.com/api/v10/webhooks/1400000000000000001/hook-Token_0.abc-DEF123"
    with caplog.at_level(logging.DEBUG):
        redactor = redact.install("the-bot-token")
        try:
            logging.getLogger("discord.webhook.async_").debug("Webhook ID %s with %s %s has returned status code %s",
                                                               1400000000000000001, "POST", url, 200)
            logging.getLogger("plugins.discord.replies").warning("failed: %s", ValueError(url))
            try:
                raise RuntimeError(f"404 at {url}")
            except RuntimeError:
                logging.getLogger("discord.webhook").exception("send failed")
        finally:
            redact.uninstall(redactor)
    text = caplog.text + "".join(r.exc_text or "" for r in caplog.records)
    assert "hook-Token_0" not in text and "abc-DEF123" not in text
    assert text.count("/webhooks/1400000000000000001/[WEBHOOK_TOKEN]") >= 3

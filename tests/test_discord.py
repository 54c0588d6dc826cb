"""The Discord platform driven through discord.py's own objects (tests/discord_harness.py), no network."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading

import pytest

from plugins.discord.tables import DiscordTables
from runtime.hookspecs import hookimpl
from tests.discord_harness import (
    ADMIN_CHANNEL_ID,
    BOT_ID,
    BOT_PERMS,
    CHANNEL_ID,
    DM_CHANNEL_ID,
    GUILD_ID,
    LOCKED_CHANNEL_ID,
    THREAD_ID,
    FakeDiscord,
    running_bot,
)

FAST = {"temperature": 0, "max_new_tokens": 3, "streaming": False, "greet": False}


def run(engine, table, scenario):
    """Run a scenario against a logged-in bot; return what it returns."""

    async def main():
        async with running_bot(engine, table) as harness:
            return await scenario(harness)

    return asyncio.run(main())


def rows(engine, sql="select * from messages order by id", params=()):
    return engine.store.query(sql, params)


def assert_no_pings(fake):
    """Every message the bot sent or edited disabled mentions (no @everyone, roles or users)."""
    checked = 0
    for call in fake.calls:
        body = call.json if isinstance(call.json, dict) else {}
        data = body.get("data", body) if call.route.endswith("/callback") else body
        if call.method in ("POST", "PATCH") and ("content" in data or "embeds" in data):
            assert data.get("allowed_mentions", {}).get("parse") == [], call
            checked += 1
    assert checked > 0


def test_bound_channel_gets_webhook_reply_from_smollm2_and_both_turns_are_logged(make_engine, real_base):
    engine = make_engine(real_base)

    async def scenario(h):
        await h.command("character", "set", user="mod", name="pixel")
        return await h.message("Hi Pixel! What is your favourite video game?")

    message = run(engine, {"temperature": 0, "max_new_tokens": 24, "stream_interval": 0}, scenario)
    fake = fake_of(engine)
    assert "**Pixel** now talks in <#%d>." % CHANNEL_ID in fake.interaction_answers()[0]
    # One webhook, created with the card's name and avatar, used for the greeting and the reply.
    created = [c for c in fake.calls if c.method == "POST" and c.route == "/channels/{id}/webhooks"]
    assert len(created) == 1 and created[0].json["name"] == "Pixel"
    assert created[0].json["avatar"].startswith("data:image/png;base64,")
    sends = fake.webhook_sends()
    assert len(sends) == 2 and len({c.path for c in sends}) == 1
    assert all(c.json["username"] == "Pixel" and c.params["wait"] == 1 for c in sends)
    assert any(c.route == "/channels/{id}/typing" for c in fake.calls)

    greeting, user, reply = rows(engine)
    assert json.loads(greeting["meta"]) == {"greeting": True} and greeting["role"] == "assistant"
    assert fake.messages[int(greeting["platform_message_id"])]["content"] == greeting["text"]
    assert (user["role"], user["text"], user["user_name"], user["user_id"]) == \
        ("user", "Hi Pixel! What is your favourite video game?", "Alice", "discord:1000000000000000011")
    assert user["platform_message_id"] == message["id"] and user["channel"] == str(CHANNEL_ID)
    assert reply["role"] == "assistant" and reply["reply_to"] == user["id"] and reply["character"] == "pixel"
    assert len(reply["text"].split()) >= 3 and reply["completion_tokens"] <= 24
    # The message in the channel ends up exactly as logged, after streaming edits of that same message.
    shown = fake.messages[int(reply["platform_message_id"])]
    assert shown["content"] == reply["text"] and int(shown["webhook_id"]) in fake.webhooks
    assert any(c.method == "PATCH" and c.route == "/webhooks/{id}/{token}/messages/{id}" for c in fake.calls)
    assert_no_pings(fake)


def test_history_of_the_channel_and_display_name_reach_the_prompt(make_engine, tiny_base, prompt_spy):
    engine = make_engine(tiny_base)
    engine.store.bind("discord", str(CHANNEL_ID), "pixel")
    spy = prompt_spy(engine)

    async def scenario(h):
        first = await h.message("Pixel, what is your favourite video game?")
        await h.message("And do you like puzzles?", author="bob", reply_to=first)

    run(engine, FAST, scenario)
    prompt = "\n".join(m["content"] for m in spy.prompts[-1])
    assert "favourite video game" in prompt and "do you like puzzles" in prompt
    assert "Bob" in prompt and "{{user}}" not in prompt  # {{user}} is the speaker's display name
    users = rows(engine, "select user_name, text from messages where role = 'user'")
    assert [r["user_name"] for r in users] == ["Alice", "Bob"]
    # A reply to someone else's message carries what it answers.
    assert users[1]["text"] == ('(replying to Alice: "Pixel, what is your favourite video game?")\n'
                                "And do you like puzzles?")


def fake_of(engine):
    return engine._discord_fake


@pytest.fixture(autouse=True)
def keep_fake(monkeypatch):
    """Let tests read the fake server after the bot closed (stored on the engine)."""
    import tests.discord_harness as harness

    original = harness.Harness.__init__

    def init(self, bot, fake):
        original(self, bot, fake)
        bot.engine._discord_fake = fake

    monkeypatch.setattr(harness.Harness, "__init__", init)


class LongReply:
    """Makes every reply long: paragraphs, a code block, more paragraphs (filter_reply hook)."""

    CODE = "```python\n" + "\n".join(f"def step_{i}(ship):\n    return ship.sail({i})" for i in range(14)) + "\n```"
    TEXT = "\n\n".join(
        [(f"Part {i}. " + "The sea was calm and the stars were bright over the harbour. " * 12).strip()
         for i in range(3)]
        + [CODE] + [(f"After {i}. " + "We sailed on until morning came at last. " * 15).strip() for i in range(3)])

    @hookimpl
    def filter_reply(self, character, reply, turn):
        reply.text = self.TEXT


def test_long_reply_is_split_with_code_block_whole_and_every_part_maps_to_the_log(make_engine, tiny_base):
    engine = make_engine(tiny_base)
    plugin = LongReply()
    engine.pm.register(plugin)
    engine.store.bind("discord", str(CHANNEL_ID), "pixel")

    async def scenario(h):
        await h.message("Tell me a long story")
        return [h.bot.tables.logged_message(int(m["id"]))["id"] for m in list(h.fake.messages.values())]

    try:
        mapped = run(engine, FAST, scenario)
    finally:
        engine.pm.unregister(plugin)
    fake = fake_of(engine)
    sends = fake.webhook_sends()
    contents = [c.json["content"] for c in sends]
    assert len(LongReply.TEXT) > 4000 and len(contents) == 3
    assert all(len(c) <= 2000 for c in contents)
    assert sum(LongReply.CODE in c for c in contents) == 1  # the code block arrives whole
    assert "\n\n".join(contents) == LongReply.TEXT  # cut only between paragraphs, nothing lost
    assert not any(c.method == "PATCH" for c in fake.calls)  # send-when-done: no edits
    reply = rows(engine, "select * from messages where role = 'assistant'")[0]
    assert reply["text"] == LongReply.TEXT
    assert mapped == [reply["id"]] * 3  # a reaction on any of the three parts finds the logged reply
    assert reply["platform_message_id"] == str(min(fake.messages))
    assert_no_pings(fake)


def test_reactions_become_feedback_on_the_logged_reply(make_engine, tiny_base):
    engine = make_engine(tiny_base)
    engine.store.bind("discord", str(CHANNEL_ID), "pixel")

    async def scenario(h):
        user_message = await h.message("Hello Pixel")
        reply_id = max(h.fake.messages)  # the character's reply is the newest message
        await h.react(reply_id, "👍", user="bob")
        up = rows(engine, "select * from feedback")
        await h.react(reply_id, "👎🏽", user="bob")  # a skin tone still means thumbs down; it replaces the 👍
        down = rows(engine, "select * from feedback")
        await h.react(reply_id, "👍", user="bob", remove=True)  # removing the old 👍 keeps the 👎
        kept = rows(engine, "select * from feedback")
        await h.react(reply_id, "🎉", user="alice")  # not feedback
        await h.react(user_message["id"], "👍", user="bob")  # a user's message, not a character's
        h.state.parse_message_reaction_add({  # the bot's own reaction
            "user_id": str(BOT_ID), "channel_id": str(CHANNEL_ID), "message_id": str(reply_id),
            "guild_id": str(GUILD_ID), "emoji": {"id": None, "name": "👍"},
            "burst": False, "type": 0})
        await h.settle()
        after_noise = rows(engine, "select * from feedback")
        await h.react(reply_id, "👎", user="bob", remove=True)
        return up, down, kept, after_noise, rows(engine, "select * from feedback")

    up, down, kept, after_noise, removed = run(engine, FAST, scenario)
    reply = rows(engine, "select * from messages where role = 'assistant'")[0]
    assert [(f["message_id"], f["user_id"], f["value"], f["source"]) for f in up] == \
        [(reply["id"], "discord:1000000000000000012", 1, "discord:reaction")]
    assert [f["value"] for f in down] == [-1] and [f["value"] for f in kept] == [-1]
    assert after_noise == kept
    assert removed == []


def test_busy_generator_answers_with_a_retry_time(make_engine, tiny_base):
    from runtime.generation.batching import BatchingGenerator as Generator
    from runtime.generation.types import GeneratorBusy, Request, SamplingSettings

    generator = Generator(tiny_base.model, tiny_base.tokenizer, max_queue=1)
    generator.close()  # a stopped worker never takes requests off its queue: one request fills it
    with contextlib.suppress(GeneratorBusy):
        for _ in range(2):
            generator.submit(Request([1], SamplingSettings()))
    engine = make_engine(tiny_base, generator=generator)
    engine.store.bind("discord", str(CHANNEL_ID), "pixel")
    message = run(engine, FAST, lambda h: h.message("Are you there, Pixel?"))
    fake = fake_of(engine)
    answers = fake.bot_messages(CHANNEL_ID)
    assert len(answers) == 1 and not fake.webhook_sends()
    assert re.search(r"Pixel has a queue of people waiting right now — please retry in \d+ s\.",
                     answers[0].json["content"])
    assert str(answers[0].json["message_reference"]["message_id"]) == message["id"]
    assert_no_pings(fake)
    # The log keeps why the message got no reply (its id and the reason, nothing of its text or author).
    assert DiscordTables(engine.store).refusals() == {message["id"]: "busy"}


def test_user_and_channel_rate_limits_answer_politely_once(make_engine, tiny_base):
    engine = make_engine(tiny_base)
    engine.store.bind("discord", str(CHANNEL_ID), "pixel")

    async def scenario(h):
        for text in ("one", "two", "three", "four"):
            await h.message(f"Pixel {text}")
        await h.message("Pixel, hi from Bob", author="bob")
        await h.message("Pixel, hi from Mod", author="mod")
        await h.message("Pixel, again from Mod", author="mod")

    run(engine, {**FAST, "user_rate": 2, "channel_rate": 3}, scenario)
    fake = fake_of(engine)
    warnings = [c.json["content"] for c in fake.bot_messages(CHANNEL_ID)]
    assert len(warnings) == 2
    assert re.fullmatch(r"You're sending messages faster than the characters can answer\. "
                        r"Please wait \d+ s and try again\.", warnings[0])
    assert warnings[1].startswith("This channel is very busy right now; characters will answer again in ")
    assert len(fake.webhook_sends()) == 3
    assert [r["text"] for r in rows(engine, "select text from messages where role = 'user' order by id")] == \
        ["Pixel one", "Pixel two", "Pixel, hi from Bob"]
    # Every refused message is in the log with its reason, also those after the window's one warning.
    assert sorted(DiscordTables(engine.store).refusals().values()) == ["channel_rate", "channel_rate",
                                                                       "user_rate", "user_rate"]


def test_admin_commands_need_permission_and_report_failures(make_engine, tiny_base, monkeypatch):
    import plugins.discord.commands as commands
    from runtime.audit.runner import AuditError

    engine = make_engine(tiny_base)
    calls = []

    def schedule_character(engine, character, cron):
        calls.append((character.id, cron, threading.current_thread() is threading.main_thread()))
        return f"{character.id} retrains at '{cron}'"

    def audit_character(engine, character):
        raise AuditError(f"{character.id}: version 9 cannot be audited")

    monkeypatch.setattr(commands, "schedule_character", schedule_character)
    monkeypatch.setattr(commands, "audit_character", audit_character)

    async def scenario(h):
        await h.command("personae", "retrain", user="alice", name="pixel")
        await h.command("character", "set", user="alice", name="pixel")
        await h.command("personae", "audit", user="mod", name="pixel")
        await h.command("personae", "schedule", user="bob", name="pixel", cron="0 4 * * 1")
        await h.command("personae", "retrain", user="mod", name="nobody")
        return h.fake.interaction_answers()

    answers = run(engine, {**FAST, "admin_users": ["1000000000000000012"]}, scenario)
    assert answers[0] == "Retraining needs the Manage Server permission (or a configured admin role or user)."
    assert answers[1].startswith("Binding characters needs the Manage Channels permission")
    assert engine.store.bound_characters("discord", str(CHANNEL_ID)) == []
    assert answers[2] == "The audit of Pixel failed: pixel: version 9 cannot be audited"
    assert answers[3] == "Scheduling of Pixel: pixel retrains at '0 4 * * 1'"
    assert calls == [("pixel", "0 4 * * 1", False)]  # ran in a worker thread
    assert answers[4].startswith("No character is called 'nobody'. Known characters: ")


def test_forget_me_removes_the_users_rows_and_opt_out_in(make_engine, tiny_base):
    engine = make_engine(tiny_base)
    engine.store.bind("discord", str(CHANNEL_ID), "pixel")
    alice, bob = "discord:1000000000000000011", "discord:1000000000000000012"

    async def scenario(h):
        await h.message("Pixel, remember me")
        alice_reply = max(h.fake.messages)
        await h.message("Pixel, I'm Bob", author="bob")
        await h.react(alice_reply, "👍", user="alice")
        await h.react(max(h.fake.messages), "👎", user="alice")
        before = len(rows(engine)), len(rows(engine, "select * from feedback"))
        await h.command("personae", "forget-me", user="alice")
        await h.command("personae", "opt-out", user="bob")
        opted = engine.store.opted_out_users()
        await h.command("personae", "opt-in", user="bob")
        return before, opted, h.fake.interaction_answers()

    before, opted, answers = run(engine, FAST, scenario)
    assert before == (4, 2)
    assert answers[0].startswith("Done: deleted 2 messages and 2 feedback entries.")
    left = rows(engine)
    assert [r["user_id"] for r in left if r["role"] == "user"] == [bob] and len(left) == 2
    assert not rows(engine, "select * from messages where user_id = ?", [alice])
    assert rows(engine, "select * from feedback") == []
    assert rows(engine, "select count(*) n from discord_messages where message_id not in "
                        "(select id from messages)")[0]["n"] == 0
    assert alice in opted and bob in opted and bob not in engine.store.opted_out_users()


def test_bots_webhooks_and_itself_are_ignored(make_engine, tiny_base):
    engine = make_engine(tiny_base)
    engine.store.bind("discord", str(CHANNEL_ID), "pixel")

    async def scenario(h):
        h.users["personae"] = h.fake.bot_user
        h.roles["personae"] = []
        before = len(h.fake.calls)
        await h.message("Pixel, beep?", author="otherbot")
        await h.message("Pixel, I am a webhook", webhook_id="1400000000000000001")
        await h.message("Pixel, talking to myself", author="personae")
        return h.fake.calls[before:]

    assert run(engine, FAST, scenario) == []
    assert rows(engine) == []


def test_without_webhook_permission_characters_speak_as_the_bot_and_an_admin_is_told_once(make_engine,
                                                                                         tiny_base):
    engine = make_engine(tiny_base)

    async def scenario(h):
        await h.command("character", "set", user="mod", channel_id=LOCKED_CHANNEL_ID, name="pixel")
        await h.message("Pixel, can you hear me?", channel_id=LOCKED_CHANNEL_ID)
        h.fake.deny_webhooks = True  # #general allows it on paper, but creating one fails with 403
        await h.command("character", "set", user="mod", name="professor-quill")
        await h.message("Quill, are you there?")

    run(engine, {**FAST, "greet": True, "admin_channel": ADMIN_CHANNEL_ID}, scenario)
    fake = fake_of(engine)
    assert fake.webhook_sends() == []
    assert not any(c.route == "/channels/{id}/webhooks" and c.path.startswith(f"/channels/{LOCKED_CHANNEL_ID}")
                   for c in fake.calls)  # no attempt without the permission
    notices = fake.bot_messages(ADMIN_CHANNEL_ID)
    assert len(notices) == 1 and "Manage Webhooks" in notices[0].json["content"]
    assert f"<#{LOCKED_CHANNEL_ID}>" in notices[0].json["content"]
    locked = [c.json["content"] for c in fake.bot_messages(LOCKED_CHANNEL_ID)]
    assert len(locked) == 2 and all(c.startswith("**Pixel**\n") for c in locked)  # greeting, reply
    general = [c.json["content"] for c in fake.bot_messages(CHANNEL_ID)]
    assert len(general) == 2 and all(c.startswith("**Professor Quill**\n") for c in general)
    logged = rows(engine, "select * from messages where role = 'assistant' and meta not like '%greeting%'")
    assert [r["character"] for r in logged] == ["pixel", "professor-quill"]
    assert_no_pings(fake)


def test_message_far_over_the_limit_gets_an_error_and_never_reaches_the_model(make_engine, tiny_base):
    engine = make_engine(tiny_base)
    engine.store.bind("discord", str(CHANNEL_ID), "pixel")
    run(engine, {**FAST, "max_input_chars": 50}, lambda h: h.message("Pixel, " + "blah " * 60))
    answers = [c.json["content"] for c in fake_of(engine).bot_messages(CHANNEL_ID)]
    assert answers == ["That message is 307 characters long; characters here read at most 50. "
                       "Please send a shorter one."]
    assert rows(engine) == []


def test_dm_character_per_user_plain_replies(make_engine, tiny_base):
    engine = make_engine(tiny_base)

    async def scenario(h):
        await h.command("character", "use", user="alice", channel_id=DM_CHANNEL_ID, name="Professor Quill")
        await h.message("Good evening, what shall we study?", channel_id=DM_CHANNEL_ID)
        await h.command("character", "use", user="alice", name="pixel")  # in a server: refused
        return h.fake.interaction_answers()

    answers = run(engine, {**FAST, "greet": True}, scenario)
    assert answers[0] == "You're now talking with **Professor Quill**."
    assert answers[1].startswith("/character use is for DMs")
    assert engine.store.bound_characters("discord", str(DM_CHANNEL_ID), "discord:1000000000000000011") == \
        ["professor-quill"]
    sent = [c.json["content"] for c in fake_of(engine).bot_messages(DM_CHANNEL_ID)]
    assert len(sent) == 2 and all(c.startswith("**Professor Quill**\n") for c in sent)  # greeting, reply
    logged = rows(engine)
    assert [r["role"] for r in logged] == ["assistant", "user", "assistant"]
    assert {r["channel"] for r in logged} == {str(DM_CHANNEL_ID)}
    assert {r["character"] for r in logged} == {"professor-quill"}


def test_several_characters_answer_when_named_or_replied_to(make_engine, tiny_base):
    engine = make_engine(tiny_base)

    async def scenario(h):
        await h.command("character", "set", user="mod", name="pixel")
        await h.command("character", "set", user="mod", name="professor-quill")
        await h.message("hello everyone")  # answer = none: nobody
        await h.message("Quill, what is a noun?")
        await h.message("Pixel, what is a game?")
        pixel_reply = h.fake.messages[max(h.fake.messages)]
        await h.message("tell me more", reply_to=pixel_reply)
        return h.fake.interaction_answers()

    answers = run(engine, {**FAST, "answer": "none"}, scenario)
    assert "Also here: pixel" in answers[1] and "answered by: none" in answers[1]
    replies = rows(engine, "select character from messages where role = 'assistant' order by id")
    assert [r["character"] for r in replies] == ["professor-quill", "pixel", "pixel"]
    assert [c.json["username"] for c in fake_of(engine).webhook_sends()] == ["Professor Quill", "Pixel", "Pixel"]
    assert [r["text"] for r in rows(engine, "select text from messages where role = 'user'")] == \
        ["Quill, what is a noun?", "Pixel, what is a game?", "tell me more"]


def test_character_info_embed_with_avatar_and_list(make_engine, tiny_base):
    engine = make_engine(tiny_base)
    engine.store.bind("discord", str(CHANNEL_ID), "pixel")

    async def scenario(h):
        await h.command("character", "info", name="captain mara voss")
        await h.command("character", "list")
        await h.command("character", "info", name="Nemo")

    run(engine, FAST, scenario)
    fake = fake_of(engine)
    callbacks = [c for c in fake.calls if c.route.endswith("/callback")]
    info = callbacks[0]
    embed = info.json["data"]["embeds"][0]
    mara = engine.catalog.get("captain-mara-voss")
    assert embed["title"] == "Captain Mara Voss" and embed["description"] == mara.description
    assert embed["thumbnail"]["url"] == "attachment://avatar.png" and info.files == ["avatar.png"]
    assert embed["fields"][0]["name"] == "First message"
    assert embed["fields"][0]["value"] == engine.greeting(mara, "Alice")[:1024]
    listing = callbacks[1].json["data"]["content"]
    assert listing.startswith("**Here:** Pixel") and "Professor Quill (`professor-quill`)" in listing
    assert callbacks[2].json["data"]["content"].startswith("No character is called 'Nemo'.")


def test_regenerate_rerolls_the_last_reply_and_keeps_both(make_engine, tiny_base):
    engine = make_engine(tiny_base)
    engine.store.bind("discord", str(CHANNEL_ID), "pixel")

    async def scenario(h):
        await h.command("regenerate")  # nothing yet
        await h.message("Pixel, tell me a joke")
        await h.command("regenerate")
        return h.fake.interaction_answers()

    answers = run(engine, {**FAST, "max_new_tokens": 6}, scenario)
    assert answers[0] == "There is no reply to regenerate here yet."
    assert answers[-1] == "Re-rolled Pixel's last reply; both versions are kept."
    first, swipe = rows(engine, "select * from messages where role = 'assistant' order by id")
    assert swipe["swipe_of"] == first["id"] and swipe["reply_to"] == first["reply_to"]
    sends = fake_of(engine).webhook_sends()
    assert len(sends) == 2 and swipe["platform_message_id"] != first["platform_message_id"]


def test_audit_alert_posts_to_the_admin_channel(make_engine, tiny_base):
    import plugins.discord as plugin

    engine = make_engine(tiny_base)

    class Report:
        version, aligned, minor, misaligned, leakage, report_html = "lora:pixel@3", 0.62, 0.2, 0.18, 0.25, None

    async def scenario(h):
        plugin.platform.bot, plugin.platform.loop = h.bot, asyncio.get_running_loop()
        try:
            await asyncio.to_thread(engine.pm.hook.audit_alert, character=engine.catalog.get("pixel"),
                                    report=Report())
            await h.settle()
        finally:
            plugin.platform.bot = plugin.platform.loop = None

    run(engine, {**FAST, "admin_channel": ADMIN_CHANNEL_ID}, scenario)
    alerts = fake_of(engine).bot_messages(ADMIN_CHANNEL_ID)
    assert len(alerts) == 1
    embed = alerts[0].json["embeds"][0]
    assert embed["title"] == "Audit alert: Pixel"
    assert {f["name"]: f["value"] for f in embed["fields"]} == {
        "Version": "lora:pixel@3", "Aligned": "62%", "Minor": "20%", "Misaligned": "18%", "Leakage": "25%"}


def test_webhook_is_reused_after_a_restart_and_recreated_when_deleted(make_engine, tiny_base):
    engine = make_engine(tiny_base)
    engine.store.bind("discord", str(CHANNEL_ID), "pixel")
    fake = FakeDiscord()

    async def first_session():
        async with running_bot(engine, FAST, fake) as h:
            await h.message("Pixel, one")

    async def second_session():
        async with running_bot(engine, FAST, fake) as h:
            await h.message("Pixel, two")
            fake.webhooks.clear()  # someone deleted the webhook in the channel settings
            await h.message("Pixel, three")

    asyncio.run(first_session())
    asyncio.run(second_session())
    creates = [c for c in fake.calls if c.method == "POST" and c.route == "/channels/{id}/webhooks"]
    assert len(creates) == 2  # once at first, once after the deletion; not at the restart
    sends = fake.webhook_sends()
    assert len(sends) == 4 and all(c.json["content"] for c in sends)  # one, two, three (404), three again
    assert sends[0].path == sends[1].path == sends[2].path != sends[3].path
    cached = rows(engine, "select * from discord_webhooks")
    assert len(cached) == 1 and int(cached[0]["webhook_id"]) in fake.webhooks
    assert len(rows(engine, "select * from messages where role = 'assistant'")) == 3


def test_thread_inherits_its_channels_character_and_replies_in_the_thread(make_engine, tiny_base):
    engine = make_engine(tiny_base)
    engine.store.bind("discord", str(CHANNEL_ID), "pixel")
    run(engine, FAST, lambda h: h.message("Pixel, let's talk in here", channel_id=THREAD_ID))
    fake = fake_of(engine)
    sends = fake.webhook_sends()
    assert len(sends) == 1 and sends[0].params["thread_id"] == THREAD_ID
    webhook = fake.webhooks[int(sends[0].path.split("/")[2])]
    assert webhook["channel_id"] == str(CHANNEL_ID)  # threads speak through their parent's webhook
    reply = rows(engine, "select * from messages where role = 'assistant'")[0]
    assert reply["channel"] == str(THREAD_ID) and reply["character"] == "pixel"


def test_allow_lists_keep_the_bot_out_of_other_channels(make_engine, tiny_base):
    engine = make_engine(tiny_base)
    engine.store.bind("discord", str(CHANNEL_ID), "pixel")
    engine.store.bind("discord", str(ADMIN_CHANNEL_ID), "pixel")

    async def scenario(h):
        await h.message("Pixel, hello?")
        await h.command("character", "list")
        await h.message("Pixel, hello in mods?", channel_id=ADMIN_CHANNEL_ID)
        return h.fake.interaction_answers()

    answers = run(engine, {**FAST, "allowed_guilds": [str(GUILD_ID)], "allowed_channels": [ADMIN_CHANNEL_ID]},
                  scenario)
    assert answers == ["Personae is not enabled in this server or channel."]
    assert [r["text"] for r in rows(engine, "select text from messages where role = 'user'")] == \
        ["Pixel, hello in mods?"]
    synced = [c.path for c in fake_of(engine).calls if c.method == "PUT"]
    assert synced == [f"/applications/{BOT_ID}/guilds/{GUILD_ID}/commands"]  # per allowed server


def test_mentioning_the_bot_where_nobody_is_bound_gets_a_hint(make_engine, tiny_base):
    engine = make_engine(tiny_base)

    async def scenario(h):
        await h.message("@Personae hello?", mentions=[h.fake.bot_user])
        await h.message("just chatting")  # not addressed to the bot: stays quiet

    run(engine, FAST, scenario)
    answers = [c.json["content"] for c in fake_of(engine).bot_messages(CHANNEL_ID)]
    assert len(answers) == 1 and answers[0].startswith("No character talks in this channel yet")
    assert rows(engine) == []


def test_required_permissions_match_the_readme():
    from plugins.discord.bot import invite_url, required_permissions

    assert required_permissions().value == 275414895616
    assert required_permissions() <= BOT_PERMS  # the harness's bot role has what the README asks for
    assert invite_url(BOT_ID).endswith("scope=bot+applications.commands&permissions=275414895616")


def test_platform_runs_until_stopped_and_keeps_the_token_out_of_logs(make_engine, tiny_base, monkeypatch, caplog):
    import logging

    import plugins.discord as plugin
    from plugins.discord.bot import PersonaeBot
    from tests.discord_harness import TOKEN, Harness, captured_http

    engine = make_engine(tiny_base)
    engine.settings.plugins = {"discord": {"temperature": 0, "max_new_tokens": 3}}
    monkeypatch.setenv("DISCORD_TOKEN", TOKEN)
    fake, ready = FakeDiscord(), threading.Event()

    async def connect(self, *, reconnect=True):
        """The gateway session: READY and GUILD_CREATE arrive, then events until close()."""
        self._connection.guild_ready_timeout = 0.01
        await Harness(self, fake).connect()
        ready.set()
        while not self.is_closed():
            await asyncio.sleep(0.02)

    monkeypatch.setattr(PersonaeBot, "connect", connect)
    with captured_http(fake), caplog.at_level(logging.DEBUG):
        thread = threading.Thread(target=plugin.platform.run, args=(engine, engine.settings, {}), daemon=True)
        thread.start()
        assert ready.wait(60), "the bot never connected"
        bot = plugin.platform.bot
        assert bot.get_guild(GUILD_ID).name == "Test Server" and bot.user.id == BOT_ID
        logging.getLogger("discord.http").debug("sending Authorization: Bot %s", TOKEN)
        plugin.platform.stop()
        thread.join(30)
    assert not thread.is_alive() and plugin.platform.bot is None
    assert fake.calls[0].path == "/users/@me"  # it logged in with the token from the environment
    assert TOKEN not in caplog.text and "Authorization: Bot [DISCORD_TOKEN]" in caplog.text
    assert f"client_id={BOT_ID}&scope=bot+applications.commands&permissions=275414895616" in caplog.text

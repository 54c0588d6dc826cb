"""Discord as llmcord and Character-Engine users expect it: reply chains, text files, channel prompts, buttons.

Driven through discord.py's own objects (tests/discord_harness.py), no network.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from plugins.discord.controls import REROLL_ID, STOP_ID
from runtime.chat.engine import Turn
from tests.discord_harness import CHANNEL_ID, THREAD_ID, FakeDiscord, running_bot
from tests.test_discord import FAST, assert_no_pings, fake_of, keep_fake, rows, run  # noqa: F401 (fixture)


def prompt_text(spy) -> str:
    return "\n".join(m["content"] for m in spy.prompts[-1])


def chat(prompt: list[dict]) -> list[dict]:
    """The history part of a prompt: without the card, lore and the card's example dialogue turns."""
    return [m for m in prompt if m["role"] != "system" and not m.get("example")]


def latest_reply(fake) -> int:
    """The id of the newest message a character's webhook sent."""
    return max(i for i, m in fake.messages.items() if int(m.get("webhook_id") or 0) in fake.webhooks)


def buttons(message: dict) -> list[str]:
    """The custom_ids of the buttons a message shows."""
    return [c["custom_id"] for row in message.get("components") or [] for c in row["components"]]


# --- reply chains ------------------------------------------------------------------------------------


def test_a_reply_to_an_older_message_brings_its_thread_into_the_history(make_engine, tiny_base, prompt_spy):
    engine = make_engine(tiny_base, history_turns=4)
    engine.store.bind("discord", str(CHANNEL_ID), "pixel")
    spy = prompt_spy(engine)

    async def scenario(h):
        await h.message("Pixel, my favourite colour is teal")
        old_reply = h.fake.messages[max(h.fake.messages)]
        for text in ("Pixel, what is the weather like?", "Pixel, tell me a joke", "Pixel, sing a song"):
            await h.message(text, author="bob")
        latest_reply = h.fake.messages[max(h.fake.messages)]
        await h.message("Why that colour?", reply_to=old_reply)
        with_thread = spy.prompts[-1]
        await h.message("Another one!", author="bob", reply_to=latest_reply)
        return old_reply, with_thread

    old_reply, with_thread = run(engine, FAST, scenario)
    contents = [m["content"] for m in chat(with_thread)]
    logged_old = rows(engine, "select * from messages where platform_message_id = ?", [old_reply["id"]])[0]
    # The thread (Alice's first message and Pixel's answer to it), out of the 4-message window, comes
    # last, right before the reply to it; the channel's recent talk stays before it.
    assert contents[-3:] == ["Pixel, my favourite colour is teal", logged_old["text"], "Why that colour?"]
    assert [m["role"] for m in chat(with_thread)[-3:]] == ["user", "assistant", "user"]
    assert any("sing a song" in c for c in contents[:-3])  # Bob's messages: the recent log
    assert contents.count("Pixel, my favourite colour is teal") == 1
    # A reply to a message the recent log holds reads the log as usual: the old thread is gone from it.
    assert "favourite colour is teal" not in prompt_text(spy)
    assert chat(spy.prompts[-1])[-1]["content"].endswith("Another one!")
    logged = rows(engine, "select text, reply_to from messages where role = 'user' order by id")
    assert logged[4]["text"] == "Why that colour?"


def test_reply_chain_follows_discord_references_fetches_uncached_messages_and_stops_at_the_bound(
        make_engine, tiny_base, prompt_spy):
    engine = make_engine(tiny_base)
    engine.store.bind("discord", str(CHANNEL_ID), "pixel")
    spy = prompt_spy(engine)

    async def scenario(h):
        # Nobody names Pixel and `answer = "none"`: these are not logged, only on Discord.
        one = await h.message("my favourite colour is teal")
        two = await h.message("teal is lovely", author="bob", reply_to=one)
        three = await h.message("and the sea is teal too", author="mod", reply_to=two)
        h.bot._connection._messages.clear()  # as after a restart: the chain is fetched from Discord
        await h.message("Pixel, which colour do we like?", reply_to=three)
        full = [m["content"] for m in chat(spy.prompts[-1])]
        fetched = [c.path for c in h.fake.calls if c.method == "GET" and "/messages/" in c.path]
        h.fake.user_messages.pop(int(one["id"]))  # deleted: the chain ends at the message after it
        h.fake.user_messages[int(two["id"])]["referenced_message"] = None  # how Discord shows a deleted one
        h.bot._connection._messages.clear()
        await h.message("Pixel, still teal?", reply_to=three)
        return two, full, fetched, [m["content"] for m in chat(spy.prompts[-1])]

    two, full, fetched, after_delete = run(engine, {**FAST, "answer": "none"}, scenario)
    assert full[-4:] == ["my favourite colour is teal", "Bob: teal is lovely", "Mod: and the sea is teal too",
                         '(replying to Mod: "and the sea is teal too")\nPixel, which colour do we like?']
    # The first hop came with the reply; the second was fetched, and brought the first message with it.
    assert fetched == [f"/channels/{CHANNEL_ID}/messages/{two['id']}"]
    assert after_delete[-3:-1] == ["Bob: teal is lovely", "Mod: and the sea is teal too"]
    assert "my favourite colour is teal" not in after_delete

    # At most reply_chain_depth messages are read back; 0 turns reply chains off.
    for depth, expected in ((2, ["Bob: teal is lovely", "Mod: and the sea is teal too"]), (0, [])):
        engine2 = make_engine(tiny_base, data_dir=str(engine.settings.data_dir) + f"-{depth}")
        engine2.store.bind("discord", str(CHANNEL_ID), "pixel")
        spy2 = prompt_spy(engine2)

        async def chain(h):
            a = await h.message("my favourite colour is teal")
            b = await h.message("teal is lovely", author="bob", reply_to=a)
            c = await h.message("and the sea is teal too", author="mod", reply_to=b)
            await h.message("Pixel, which colour?", reply_to=c)

        run(engine2, {**FAST, "answer": "none", "reply_chain_depth": depth}, chain)
        assert [m["content"] for m in chat(spy2.prompts[-1])[:-1]] == expected


# --- text attachments ---------------------------------------------------------------------------------


def test_text_files_are_read_with_the_message_and_other_files_are_noted(make_engine, tiny_base, prompt_spy):
    engine = make_engine(tiny_base, context_tokens=1024)  # files get at most 2 * 1024 characters in all
    engine.store.bind("discord", str(CHANNEL_ID), "pixel")
    spy = prompt_spy(engine)

    async def scenario(h):
        files = [
            h.attachment("notes.txt", "Line one\r\nCafé \xff".encode("latin-1").replace(b"Caf\xe9", "Café".encode()),
                         "text/plain; charset=utf-8"),
            h.attachment("game.py", b"def score():\n    return 42\n"),  # no content type: known by its name
            h.attachment("photo.png", b"\x89PNG\r\n\x1a\n", "image/png"),
            h.attachment("huge.md", b"# big\n" * 10, "text/markdown", size=50_000),  # over the size limit
            h.attachment("long.txt", b"The harbour was calm. " * 120, "text/plain"),  # under the limit, over the room left
        ]
        await h.message("Pixel, what do these say?", attachments=files)
        await h.message("", attachments=[h.attachment("meme.gif", b"GIF89a", "image/gif")])  # nothing to read
        await h.message("", author="bob", attachments=[h.attachment("plan.md", b"Step 1: sail")])
        return [c.path for c in h.fake.calls if c.path.startswith("https://")]

    downloads = run(engine, {**FAST, "attachment_bytes": 3000}, scenario)
    assert [url.rsplit("/", 1)[1] for url in downloads] == ["notes.txt", "game.py", "long.txt", "plan.md"]
    alice, bob = [r["text"] for r in rows(engine, "select text from messages where role = 'user' order by id")]
    notes_txt = "[file notes.txt]\nLine one\nCafé \ufffd\n[end of notes.txt]"
    game_py = "[file game.py]\ndef score():\n    return 42\n[end of game.py]"
    room = 2048 - len(notes_txt) - len(game_py)
    long_txt = f"[file long.txt]\n{('The harbour was calm. ' * 120)[:room]}\n[… the rest of long.txt was cut]\n[end of long.txt]"
    assert alice == "\n\n".join([notes_txt, game_py, long_txt, "[photo.png was attached but not read]",  # noqa: FLY002
                                  "[huge.md was attached but not read]", "Pixel, what do these say?"])
    assert bob == "[file plan.md]\nStep 1: sail\n[end of plan.md]"
    assert "return 42" in chat(spy.prompts[0])[-1]["content"]
    assert "Step 1: sail" in chat(spy.prompts[-1])[-1]["content"]
    notes = [c.json["content"] for c in fake_of(engine).bot_messages(CHANNEL_ID)]
    assert notes == [("Not everything attached was read: photo.png (only text files are read); huge.md (50,000 "
                      f"bytes; files of at most 3,000 bytes are read); long.txt (cut after {room:,} characters, "
                      "all the room a prompt has for files).")]
    assert len(fake_of(engine).webhook_sends()) == 2  # the gif alone got no answer
    assert_no_pings(fake_of(engine))


# --- per-channel prompt additions ---------------------------------------------------------------------


def test_admins_set_show_and_clear_a_channel_prompt_addition(make_engine, tiny_base, prompt_spy):
    engine = make_engine(tiny_base)
    engine.store.bind("discord", str(CHANNEL_ID), "pixel")
    spy = prompt_spy(engine)

    async def scenario(h):
        await h.command("character", "prompt", user="alice", text="Talk like a pirate.")
        await h.command("character", "prompt", user="mod", text="x" * 1001)
        await h.command("character", "prompt", user="mod", text="Always greet {{user}} as a sailor, {{char}}.")
        await h.message("Pixel, hello")
        in_channel = spy.prompts[-1]
        await h.message("Pixel, hello from the thread", channel_id=THREAD_ID)
        in_thread = spy.prompts[-1]
        await h.command("character", "info", name="pixel")
        info = [c for c in h.fake.calls if c.route.endswith("/callback")][-1].json["data"]["embeds"][0]
        await h.command("character", "prompt", user="mod")  # no text: clear
        await h.command("character", "prompt", user="mod")
        await h.message("Pixel, and now?")
        return in_channel, in_thread, info, spy.prompts[-1], h.fake.interaction_answers()

    in_channel, in_thread, info, cleared, answers = run(engine, FAST, scenario)
    assert answers[0] == ("Changing this channel's prompt needs the Manage Channels permission "
                          "(or a configured admin role or user).")
    assert answers[1] == "That prompt addition is 1001 characters long; the limit is 1000. Please shorten it."
    assert answers[2] == f"Characters in <#{CHANNEL_ID}> now also follow: Always greet {{{{user}}}} as a sailor, " \
                         "{{char}}."
    assert in_channel[0]["role"] == "system"
    assert in_channel[0]["content"].endswith("\n\nAlways greet Alice as a sailor, Pixel.")
    assert in_thread[0]["content"] == in_channel[0]["content"]  # a thread follows its channel
    assert {"name": "This channel's prompt addition", "value": "Always greet {{user}} as a sailor, {{char}}.",
            "inline": False} in info["fields"]
    assert answers[-2].startswith(f"Cleared the prompt addition of <#{CHANNEL_ID}> (it was: Always greet")
    assert answers[-1] == f"<#{CHANNEL_ID}> has no prompt addition of its own."
    assert "sailor" not in cleared[0]["content"]
    assert rows(engine, "select * from discord_channel_prompts") == []
    assert rows(engine, "select name from _sqlite_migrations where migration_set = 'personae.discord' "
                        "order by name") == [{"name": "m001_webhooks_messages_notices"},
                                             {"name": "m002_channel_prompts"},
                                             {"name": "m003_no_webhook_tokens"},
                                             {"name": "m004_channel_notes"},
                                             {"name": "m005_refusals"}]


# --- stop and re-roll buttons ---------------------------------------------------------------------------


def test_reroll_button_makes_a_swipe_like_regenerate_and_works_after_a_restart(make_engine, tiny_base):
    engine = make_engine(tiny_base)
    engine.store.bind("discord", str(CHANNEL_ID), "pixel")
    fake = FakeDiscord()
    # Sampled: the tiny random model's greedy replies are blank, and a blank reply never streams.
    streamed = {**FAST, "streaming": True, "stream_interval": 0, "max_new_tokens": 8, "temperature": 1.0}

    async def first_session():
        async with running_bot(engine, streamed, fake) as h:
            await h.message("Pixel, tell me everything")
            reply_id = latest_reply(fake)
            first_send = fake.webhook_sends()[0].json
            await h.click(reply_id, REROLL_ID, user="bob")
            # One persistent view handles every click: discord.py keeps no view per message sent.
            assert not h.bot._connection._view_store._synced_message_views
            return reply_id, first_send

    async def second_session(old_id):
        async with running_bot(engine, streamed, fake) as h:  # a restart: the buttons still work
            await h.click(latest_reply(fake), REROLL_ID, user="alice")
            await h.click(old_id, REROLL_ID, user="alice")  # swiped away: not the latest any more

    reply_id, first_send = asyncio.run(first_session())
    asyncio.run(second_session(reply_id))
    first, swipe, second_swipe = rows(engine, "select * from messages where role = 'assistant' order by id")
    assert swipe["swipe_of"] == first["id"] and swipe["reply_to"] == first["reply_to"]
    assert second_swipe["swipe_of"] == swipe["id"]
    assert [c["custom_id"] for c in first_send["components"][0]["components"]] == [STOP_ID]  # while written
    assert buttons(fake.messages[reply_id]) == [REROLL_ID]  # once logged
    assert buttons(fake.messages[int(second_swipe["platform_message_id"])]) == [REROLL_ID]
    assert fake.interaction_answers() == ["Re-rolled Pixel's last reply; both versions are kept.",
                                          "Re-rolled Pixel's last reply; both versions are kept.",
                                          "Only Pixel's latest reply here can be re-rolled."]
    assert_no_pings(fake)


def test_stop_button_stops_the_reply_for_who_asked_or_a_moderator(make_engine, tiny_base):
    engine = make_engine(tiny_base)
    engine.store.bind("discord", str(CHANNEL_ID), "pixel")
    long = {**FAST, "streaming": True, "stream_interval": 0, "max_new_tokens": 900, "temperature": 1.0}
    # A short reply logged earlier in the channel, for the re-roll below to re-roll.
    engine.reply(Turn(platform="discord", channel=str(CHANNEL_ID), user_id="discord:1000000000000000012",
                      text="Pixel, say something", user_name="Bob", character=engine.catalog.get("pixel"),
                      sampling={"max_new_tokens": 3})).result()

    async def stop_while_written(h, start, clickers):
        before = set(h.fake.messages)
        await start
        for _ in range(3000):  # until the reply shows with its Stop button
            shown = [m for m in set(h.bot.live) - before if m in h.fake.messages]
            if shown:
                break
            await asyncio.sleep(0.01)
        for user in clickers:
            await h.click(shown[0], STOP_ID, user=user, wait=False)
            await asyncio.sleep(0)
        await h.settle()
        return shown[0]

    async def scenario(h):
        first = await stop_while_written(h, h.message("Pixel, tell me everything", wait=False), ["bob", "alice"])
        await h.click(first, STOP_ID, user="alice")  # finished already
        second = await stop_while_written(h, h.message("Pixel, once more", wait=False), ["mod"])
        third = await stop_while_written(h, h.command("regenerate", user="bob", wait=False), ["bob"])
        return first, second, third

    first, second, third = run(engine, long, scenario)
    fake = fake_of(engine)
    answers = fake.interaction_answers()
    assert answers == ["Only the person it answers, or a moderator (Manage Messages), can stop this reply.",
                       "Stopped Pixel's reply.", "That reply has already finished.", "Stopped Pixel's reply.",
                       "Stopped Pixel's reply.", "The re-roll of Pixel's reply was stopped; the earlier one stays."]
    # Stopped replies are not logged (nothing to train on); what was written stays, without buttons.
    logged = rows(engine, "select * from messages where role = 'assistant'")
    assert len(logged) == 1 and logged[0]["swipe_of"] is None and logged[0]["reply_to"] == \
        rows(engine, "select id from messages where text = 'Pixel, say something'")[0]["id"]
    assert [r["text"] for r in rows(engine, "select text from messages where role = 'user'")] == \
        ["Pixel, say something", "Pixel, tell me everything", "Pixel, once more"]
    for message_id in (first, second, third):
        assert fake.messages[message_id]["content"] and buttons(fake.messages[message_id]) == []
    last_edit = [c for c in fake.calls if c.method == "PATCH" and c.path.endswith(str(first))][-1]
    assert last_edit.json["components"] == []
    assert json.dumps(fake.webhook_sends()[0].json["components"]).count(STOP_ID) == 1


# --- end to end on the real SmolLM2 ------------------------------------------------------------------------


@pytest.mark.real_model
def test_smollm2_answers_a_reply_to_an_old_thread_with_a_file_and_the_channel_prompt_then_rerolls(
        make_engine, real_base, prompt_spy):
    engine = make_engine(real_base, history_turns=2)
    engine.store.bind("discord", str(CHANNEL_ID), "pixel")
    spy = prompt_spy(engine)

    async def scenario(h):
        await h.command("character", "prompt", user="mod", text="Keep every answer under twenty words.")
        await h.message("Pixel, my favourite game is Tetris")
        old_reply = h.fake.messages[latest_reply(h.fake)]
        await h.message("Pixel, what is the weather like in your world?", author="bob")
        notes = h.attachment("notes.txt", b"The arcade password is PINEAPPLE.", "text/plain")
        await h.message("What do you think of my note?", reply_to=old_reply, attachments=[notes])
        reply_id = latest_reply(h.fake)
        await h.click(reply_id, REROLL_ID, user="bob")
        return old_reply, reply_id

    old_reply, reply_id = run(engine, {**FAST, "max_new_tokens": 16, "streaming": True, "stream_interval": 0},
                              scenario)
    fake = fake_of(engine)
    prompt = spy.prompts[2]  # the reply to the old message
    assert prompt[0]["content"].endswith("\n\nKeep every answer under twenty words.")
    history = [m["content"] for m in chat(prompt)]
    assert history[-3:-1] == ["Pixel, my favourite game is Tetris", fake.messages[int(old_reply["id"])]["content"]]
    assert history[-1].startswith("[file notes.txt]\nThe arcade password is PINEAPPLE.\n[end of notes.txt]")
    assert [m["content"] for m in chat(spy.prompts[-1])] == history  # the re-roll answers the same thread
    replies = rows(engine, "select * from messages where role = 'assistant' order by id")
    answer, swipe = replies[-2:]
    assert answer["platform_message_id"] == str(reply_id) and swipe["swipe_of"] == answer["id"]
    assert len(answer["text"].split()) >= 3 and len(swipe["text"].split()) >= 3
    for row in (answer, swipe):  # what the channel shows is what was logged, with its Re-roll button
        shown = fake.messages[int(row["platform_message_id"])]
        assert shown["content"] == row["text"] and buttons(shown) == [REROLL_ID]
    assert fake.interaction_answers()[-1] == "Re-rolled Pixel's last reply; both versions are kept."
    assert_no_pings(fake)


def test_a_reroll_of_a_reply_in_a_thread_sees_that_thread_and_the_channel_prompt_counts(
        make_engine, tiny_base, prompt_spy):
    engine = make_engine(tiny_base, history_turns=4)
    engine.store.bind("discord", str(CHANNEL_ID), "pixel")
    spy = prompt_spy(engine)

    async def scenario(h):
        await h.command("character", "prompt", user="mod", text="Answer in rhyme.")
        await h.message("Pixel, my favourite colour is teal")
        old_reply = h.fake.messages[max(h.fake.messages)]
        for text in ("Pixel, what is the weather like?", "Pixel, tell me a joke", "Pixel, sing a song"):
            await h.message(text, author="bob")
        await h.message("Why that colour?", reply_to=old_reply)
        asked = spy.prompts[-1]
        await h.command("regenerate")
        return asked, spy.prompts[-1]

    asked, rerolled = run(engine, {**FAST, "max_new_tokens": 6}, scenario)
    # The re-roll answers the same thread the reply did, not the channel's latest log.
    assert chat(rerolled) == chat(asked)
    assert chat(rerolled)[-1]["content"] == "Why that colour?"
    assert "Pixel, my favourite colour is teal" in [m["content"] for m in chat(rerolled)]  # out of the 4-message log
    # The channel's prompt is part of the system prompt the budget was fitted to.
    assert rerolled[0]["content"].endswith("Answer in rhyme.") and asked[0]["content"] == rerolled[0]["content"]
    first, swipe = rows(engine, "select * from messages where role = 'assistant' and reply_to = "
                                "(select max(id) from messages where role = 'user') order by id")
    assert swipe["swipe_of"] == first["id"]


def test_admins_set_a_channel_authors_note_that_goes_in_at_its_depth(make_engine, tiny_base, prompt_spy):
    engine = make_engine(tiny_base)
    engine.store.bind("discord", str(CHANNEL_ID), "pixel")
    spy = prompt_spy(engine)

    async def scenario(h):
        await h.command("character", "note", user="alice", text="[It is raining.]")
        await h.command("character", "note", user="mod", text="[{{char}} is sleepy; {{user}} is cold.]", depth=1)
        await h.message("Pixel, hello")
        await h.message("Pixel, how are you?")
        in_channel = spy.prompts[-1]
        await h.message("Pixel, hello from the thread", channel_id=THREAD_ID)
        in_thread = spy.prompts[-1]
        await h.command("character", "note", user="mod")  # no text: clear
        await h.message("Pixel, and now?")
        return in_channel, in_thread, spy.prompts[-1], h.fake.interaction_answers()

    in_channel, in_thread, cleared, answers = run(engine, FAST, scenario)
    assert answers[0].startswith("Changing this channel's author's note needs the Manage Channels permission")
    assert answers[1].startswith(f"Characters in <#{CHANNEL_ID}> now get this author's note 1 messages from the end")
    note = {"role": "system", "content": "[Pixel is sleepy; Alice is cold.]"}
    # Depth 1: right before the newest message, as SillyTavern places its Author's Note.
    tail = [m for m in in_channel if not m.get("example")][-2:]
    assert tail[0] == note and tail[1]["role"] == "user" and tail[1]["content"].endswith("how are you?")
    assert note in in_thread  # a thread follows its channel
    assert note not in cleared and answers[-1].startswith(f"Cleared the author's note of <#{CHANNEL_ID}>")

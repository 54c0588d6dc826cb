"""user_forgotten: `personae forget` and Discord's /personae forget-me also erase a third-party plugin's own data."""

from __future__ import annotations

import asyncio
import textwrap

import pytest
from click.testing import CliRunner

from runtime.cli import cli
from runtime.plugins import get_plugin_manager
from runtime.store import Store

# A plugin as a third party writes it: its own table in the log's database, filled from message_logged.
NOTEBOOK_PLUGIN = textwrap.dedent('''
    from runtime.hookspecs import hookimpl

    def _table(store):
        store.write(lambda: store.db.execute(
            "create table if not exists notebook_notes (user_id text, note text)"))

    @hookimpl
    def message_logged(message, store):
        if message["role"] == "user":
            _table(store)
            store.write(lambda: store.db.execute("insert into notebook_notes values (?, ?)",
                                                 [message["user_id"], "said: " + message["text"]]))

    @hookimpl
    def user_forgotten(user_id, store):
        _table(store)
        store.write(lambda: store.db.execute("delete from notebook_notes where user_id = ?", [user_id]))
''')

BROKEN_PLUGIN = textwrap.dedent('''
    from runtime.hookspecs import hookimpl

    @hookimpl
    def user_forgotten(user_id, store):
        raise RuntimeError("the notebook server is down")
''')


@pytest.fixture
def plugins_dir(tmp_path, monkeypatch):
    folder = tmp_path / "my-plugins"
    folder.mkdir()
    monkeypatch.setenv("PERSONAE_PLUGINS_DIR", str(folder))
    yield folder
    get_plugin_manager(reload=True)  # the next test starts without these plugins


def notes(store):
    return store.query("select user_id, note from notebook_notes order by rowid")


def log_turn(store, pm, user_id, text):
    conversation = store.conversation_id("console", "c", "pixel")
    message = store.log_message(conversation_id=conversation, role="user", text=text, character="pixel",
                                platform="console", channel="c", user_id=user_id)
    pm.hook.message_logged(message=message, store=store)


def test_personae_forget_erases_a_third_party_plugins_table(tmp_path, plugins_dir):
    (plugins_dir / "notebook.py").write_text(NOTEBOOK_PLUGIN)
    pm = get_plugin_manager(reload=True)
    store = Store(tmp_path / "data" / "personae.db")
    log_turn(store, pm, "zed", "my address is 1 Main St")
    log_turn(store, pm, "amy", "hello")
    assert [n["user_id"] for n in notes(store)] == ["zed", "amy"]

    result = CliRunner().invoke(cli, ["forget", "zed", "--yes"])
    assert result.exit_code == 0, result.output
    assert "Deleted 1 messages" in result.output
    assert notes(store) == [{"user_id": "amy", "note": "said: hello"}]
    assert [m["user_id"] for m in store.recent()] == ["amy"]


def test_a_failing_plugin_makes_forget_say_what_is_left(tmp_path, plugins_dir):
    (plugins_dir / "broken.py").write_text(BROKEN_PLUGIN)
    get_plugin_manager(reload=True)
    store = Store(tmp_path / "data" / "personae.db")
    log_turn(store, get_plugin_manager(), "zed", "hi")
    result = CliRunner().invoke(cli, ["forget", "zed", "--yes"])
    assert result.exit_code == 2
    assert "a plugin failed" in result.output and "notebook server is down" in result.output
    assert "run the forget again" in result.output
    assert store.recent() == []  # the log's own rows went regardless


def test_discord_forget_me_erases_a_third_party_plugins_table(make_engine, tiny_base, plugins_dir):
    from tests.discord_harness import CHANNEL_ID, running_bot

    (plugins_dir / "notebook.py").write_text(NOTEBOOK_PLUGIN)
    engine = make_engine(tiny_base)  # make_engine reloads the plugins, the notebook among them
    engine.store.bind("discord", str(CHANNEL_ID), "pixel")
    table = {"temperature": 0, "max_new_tokens": 3, "streaming": False, "greet": False}

    async def scenario():
        async with running_bot(engine, table) as h:
            await h.message("Pixel, my name is Alice Liddell")
            await h.message("Pixel, I'm Bob", author="bob")
            before = [n["user_id"] for n in notes(engine.store)]
            await h.command("personae", "forget-me", user="alice")
            return before, h.fake.interaction_answers()

    before, answers = asyncio.run(scenario())
    alice, bob = "discord:1000000000000000011", "discord:1000000000000000012"
    assert before == [alice, bob]
    assert answers[0].startswith("Done: deleted 2 messages")
    assert [n["user_id"] for n in notes(engine.store)] == [bob]

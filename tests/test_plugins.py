"""The plugin manager: entry points one at a time, the plugins directory, built-ins, `personae plugins`."""

from __future__ import annotations

import importlib.metadata
import json
import textwrap

from click.testing import CliRunner

from runtime import plugins
from runtime.cli import cli


class FakeEntryPoint:
    """Stands in for an installed distribution's entry point (the loading code is the real one)."""

    def __init__(self, name, load):
        self.name, self._load = name, load

    def load(self):
        return self._load()


def test_broken_entry_point_is_reported_and_skipped(monkeypatch, capsys):
    def broken():
        raise ImportError("missing dependency 'frobnicate'")

    from runtime.hookspecs import hookimpl

    class Good:
        @hookimpl
        def register_commands(self, cli):
            pass

    points = [FakeEntryPoint("broken-plugin", broken), FakeEntryPoint("good-plugin", lambda: Good())]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: points if group == "personae" else [])
    pm = plugins.get_plugin_manager("", reload=True)
    try:
        names = {row["name"] for row in plugins.plugin_summaries(pm)}
        assert "good-plugin" in names and "broken-plugin" not in names
        assert "plugins.characters" in names and "plugins.console" in names
        assert plugins.load_errors[0][0] == "broken-plugin"
        assert "frobnicate" in capsys.readouterr().err
    finally:
        plugins.get_plugin_manager("", reload=True)


def test_plugins_dir_plugin_is_loaded_and_its_hook_called(tmp_path):
    folder = tmp_path / "myplugins"
    folder.mkdir()
    (folder / "shouty.py").write_text(textwrap.dedent('''
        from runtime.hookspecs import hookimpl

        @hookimpl
        def filter_reply(character, reply, turn):
            reply.text = reply.text.upper()
    '''))
    (folder / "broken.py").write_text("raise RuntimeError('boom')\n")
    pm = plugins.get_plugin_manager(str(folder), reload=True)
    try:
        from runtime.chat.engine import ReplyDraft

        draft = ReplyDraft("quiet words")
        pm.hook.filter_reply(character=None, reply=draft, turn=None)
        assert draft.text == "QUIET WORDS"
        assert any("broken.py" in name for name, _ in plugins.load_errors)
    finally:
        plugins.get_plugin_manager("", reload=True)


def test_personae_plugins_lists_hooks_of_each_plugin(monkeypatch, tmp_path):
    monkeypatch.setenv("PERSONAE_PLUGINS_DIR", "")
    plugins.get_plugin_manager("", reload=True)
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row["hooks"] for row in json.loads(result.output)["plugins"]}
    assert rows["plugins.characters"] == ["register_characters"]
    assert "register_commands" in rows["plugins.console"]


def test_register_then_unregister_in_finally():
    from runtime.hookspecs import hookimpl

    pm = plugins.get_plugin_manager("", reload=True)
    found = []

    class Extra:
        @hookimpl
        def register_characters(self, register):
            from runtime.characters import parse_card

            register(parse_card({"name": "Temporary Tess", "description": "only here for a test"}))

    plugin = Extra()
    pm.register(plugin)
    try:
        pm.hook.register_characters(register=found.append)
    finally:
        pm.unregister(plugin)
    assert "temporary-tess" in [c.id for c in found]
    found.clear()
    pm.hook.register_characters(register=found.append)
    assert "temporary-tess" not in [c.id for c in found]

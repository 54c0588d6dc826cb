"""The command line: characters, logs, forget, and clear errors for bad input (exit status 2)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from PIL import Image

from runtime.cli import cli
from runtime.store import Store


def run(*args, **kwargs):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False, **kwargs)


def test_help_lists_the_core_commands():
    result = run("--help")
    for command in ("chat", "characters", "logs", "forget", "config", "plugins", "install", "serve"):
        assert command in result.output


def test_help_does_not_import_torch():
    code = "import sys; from runtime.cli import cli\ntry:\n cli(['--help'])\nexcept SystemExit: pass\n" \
           "print('torch' in sys.modules, 'sqlite_utils' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False False"


def test_characters_list_and_show():
    result = run("characters", "list", "--json")
    ids = [row["id"] for row in json.loads(result.output)]
    assert {"captain-mara-voss", "professor-quill", "pixel"} <= set(ids)
    shown = run("characters", "show", "Pixel")
    assert "Pixel (pixel)" in shown.output and "First message" in shown.output


def test_unknown_character_lists_known_ones():
    result = CliRunner().invoke(cli, ["characters", "show", "nobody"])
    assert result.exit_code == 2
    assert "unknown character 'nobody'" in result.output and "pixel" in result.output


def test_import_export_round_trip_through_the_data_dir(tmp_path):
    card = {"spec": "chara_card_v2", "spec_version": "2.0",
            "data": {"name": "Dot Matrix", "description": "A printer with opinions.", "personality": "",
                     "scenario": "", "first_mes": "BRRRT. Hello {{user}}.", "mes_example": "",
                     "creator_notes": "", "system_prompt": "", "post_history_instructions": "",
                     "alternate_greetings": [], "tags": [], "creator": "", "character_version": "",
                     "extensions": {"someone.else": {"keep": True}}}}
    source = tmp_path / "dot.json"
    source.write_text(json.dumps(card))
    assert "Imported Dot Matrix as 'dot-matrix'" in run("characters", "import", str(source)).output
    assert "dot-matrix" in run("characters", "list").output
    run("characters", "export", "dot-matrix", str(tmp_path / "out.png"))
    run("characters", "export", "dot-matrix", str(tmp_path / "out.json"))
    assert json.loads((tmp_path / "out.json").read_text()) == card
    assert Image.open(tmp_path / "out.png").format == "PNG"


@pytest.mark.parametrize("content, field", [
    (b"not a card at all", "file"),
    (json.dumps({"spec": "chara_card_v2", "data": {"description": "no name"}}).encode(), "name"),
    (json.dumps({"spec": "chara_card_v2", "data": {"name": "X", "description": 7}}).encode(), "description"),
])
def test_bad_cards_are_refused_with_the_file_and_field(tmp_path, content, field):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    result = CliRunner().invoke(cli, ["characters", "import", str(path)])
    assert result.exit_code == 2
    message = result.output.strip().splitlines()[-1]
    assert "bad.json" in message and field in message
    assert not (tmp_path / "data" / "characters").exists() or not list((tmp_path / "data" / "characters").iterdir())


def test_png_without_card_chunk_is_refused(tmp_path):
    path = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(path)
    result = CliRunner().invoke(cli, ["characters", "import", str(path)])
    assert result.exit_code == 2 and "plain.png" in result.output


def test_logs_search_json_and_forget(tmp_path):
    store = Store(tmp_path / "data" / "personae.db")
    conversation = store.conversation_id("console", "c", "pixel")
    asked = store.log_message(conversation_id=conversation, role="user", text="beep boop please",
                              character="pixel", platform="console", channel="c", user_id="zed")
    store.log_message(conversation_id=conversation, role="assistant", text="BEEP!", character="pixel",
                      platform="console", channel="c", reply_to=asked["id"])
    rows = json.loads(run("logs", "--json", "--search", "boop").output)
    assert [r["text"] for r in rows] == ["beep boop please"]
    assert "BEEP!" in run("logs").output
    result = run("forget", "zed", "--yes")
    assert "Deleted 2 messages" in result.output
    assert json.loads(run("logs", "--json").output) == []


def test_corrupt_database_is_a_clear_error(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "personae.db").write_bytes(b"garbage" * 1000)
    result = CliRunner().invoke(cli, ["logs"])
    assert result.exit_code == 2 and "not a usable SQLite database" in result.output

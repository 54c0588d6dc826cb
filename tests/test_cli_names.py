"""Every command that takes a character accepts its id or its display name, and suggests near misses."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from helpers_adapters import train_tiny_lora

from runtime.cli import cli

CARD = {"spec": "chara_card_v2", "spec_version": "2.0",
        "data": {"name": "Captain Mirela Vance", "description": "A ship's captain.", "first_mes": "Aye."}}


@pytest.fixture
def run(monkeypatch, tiny_model_folder, tmp_path):
    monkeypatch.setenv("PERSONAE_BASE_MODEL", str(tiny_model_folder))
    runner = CliRunner()

    def invoke(*args, code=0):
        result = runner.invoke(cli, list(map(str, args)), catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result.output

    card = tmp_path / "mirela.json"
    card.write_text(json.dumps(CARD))
    invoke("characters", "import", card)
    return invoke


def test_adapters_commands_take_the_display_name(run, tiny_base, tmp_path):
    lora = train_tiny_lora(tiny_base, tmp_path / "lora", steps=1)
    assert "Added captain-mirela-vance@1 (lora, candidate)" in run("adapters", "add", lora, "-c",
                                                                    "Captain Mirela Vance")
    other = train_tiny_lora(tiny_base, tmp_path / "other", steps=1, seed=2)  # the same files would not be stored twice
    assert "captain-mirela-vance@2" in run("adapters", "add", other, "-c", "captain mirela vance", "--activate")
    listed = json.loads(run("adapters", "list", "Captain Mirela Vance", "--json"))
    assert [(r["ref"], r["state"]) for r in listed] == [("captain-mirela-vance@1", "candidate"),
                                                         ("captain-mirela-vance@2", "active")]
    assert run("adapters", "show", "Captain Mirela Vance@1").startswith("captain-mirela-vance@1  lora")
    assert "captain-mirela-vance@1 is now active" in run("adapters", "promote", "CAPTAIN MIRELA VANCE", 1)
    assert "rolled back to captain-mirela-vance@2" in run("adapters", "rollback", "Captain Mirela Vance")
    assert "Removed captain-mirela-vance@1" in run("adapters", "remove", "Captain Mirela Vance", 1, "--yes")


@pytest.mark.parametrize("command", [
    ("characters", "show", "Captian Mirela Vance"),
    ("adapters", "list", "Captain Mirela Vanse"),
    ("adapters", "add", ".", "-c", "captain-mirela-vanc"),
    ("adapters", "promote", "Captain Mirella Vance", "1"),
    ("adapters", "show", "captain-mirella-vance@1"),
    ("schedule", "add", "Captain Mirela Vence", "--cron", "0 3 * * *"),
])
def test_near_misses_get_a_did_you_mean_in_one_line(run, command):
    out = run(*command, code=2)
    assert "did you mean 'captain-mirela-vance'" in out and out.count("\n") == 1, out


def test_a_schedule_is_kept_by_id_whichever_way_it_was_named(run):
    assert "scheduled captain-mirela-vance" in run("schedule", "add", "Captain Mirela Vance", "--cron", "0 3 * * *")
    assert "removed the schedule of captain-mirela-vance" in run("schedule", "remove", "Captain Mirela Vance")

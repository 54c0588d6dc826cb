"""End to end on the real SmolLM2: `personae chat` with piped input, both turns in SQLite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from runtime.cli import cli
from runtime.store import Store


def test_piped_chat_on_real_smollm2_logs_both_turns(tmp_path, smollm2_folder):
    result = subprocess.run(
        # The installed console script, exactly as a user runs it.
        [str(Path(sys.executable).with_name("personae")), "chat", "captain-mara-voss", "--user", "Ann",
         "--temperature", "0", "--max-tokens", "24"],
        input="Who are you?\nWhat is your ship called?\n", capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("Captain Mara Voss:")]
    assert len(lines) == 3  # the greeting, then one reply per piped line
    assert all(len(line) > len("Captain Mara Voss: ") for line in lines)
    rows = Store(tmp_path / "data" / "personae.db").recent(20)
    assert [(r["role"], r["text"]) for r in rows if r["role"] == "user"] == [
        ("user", "Who are you?"), ("user", "What is your ship called?")]
    replies = [r for r in rows if r["role"] == "assistant" and r["reply_to"]]
    assert len(replies) == 2 and all(r["completion_tokens"] > 0 for r in replies)
    # `make chat` serves the character's own weights: the LoRA Mara ships, adopted as version 1.
    assert all(r["weights_version"] == "lora:captain-mara-voss@1" and r["platform"] == "console" for r in replies)


def test_console_commands_swap_regen_and_unknown(tmp_path, smollm2_folder, tiny_model_folder, monkeypatch):
    monkeypatch.setenv("PERSONAE_BASE_MODEL", str(tiny_model_folder))
    script = "Hello\n/regen\n/swap nobody\n/swap pixel\nHi Pixel\n/bogus\n/exit\nnever sent\n"
    result = CliRunner().invoke(cli, ["chat", "professor-quill", "--max-tokens", "4", "--temperature", "0"],
                                input=script)
    assert result.exit_code == 0, result.output
    assert "unknown character 'nobody'" in result.output and "unknown command /bogus" in result.output
    rows = Store(tmp_path / "data" / "personae.db").recent(50)
    users = [r["text"] for r in rows if r["role"] == "user"]
    assert users == ["Hello", "Hi Pixel"]
    assert any(r["swipe_of"] for r in rows)  # /regen kept both replies
    assert {r["character"] for r in rows} == {"professor-quill", "pixel"}

"""`personae adapters ...` through click's CliRunner on real tiny adapters."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from helpers_adapters import train_tiny_full, train_tiny_lora

from runtime.cli import cli


@pytest.fixture
def run(monkeypatch, tiny_model_folder):
    monkeypatch.setenv("PERSONAE_BASE_MODEL", str(tiny_model_folder))
    runner = CliRunner()

    def invoke(*args, code=0):
        result = runner.invoke(cli, ["adapters", *map(str, args)], catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result.output

    return invoke


def test_cli_lifecycle(run, tiny_base, tmp_path):
    lora = train_tiny_lora(tiny_base, tmp_path / "lora")
    assert "No stored versions" in run("list")
    assert "Added pixel@1 (lora, candidate)" in run("add", lora, "--character", "pixel")
    assert "Already stored as pixel@1 (lora, candidate)" in run("add", lora, "--character", "pixel")
    lora2 = train_tiny_lora(tiny_base, tmp_path / "lora2", seed=1)
    assert "Added pixel@2 (lora, active)" in run("add", lora2, "--character", "pixel", "--activate")
    rows = json.loads(run("list", "pixel", "--json"))
    assert [(r["number"], r["state"]) for r in rows] == [(1, "candidate"), (2, "active")]
    assert "pixel@1" in run("list") and "active" in run("list", "pixel")
    shown = run("show", "pixel")
    assert shown.startswith("pixel@2  lora  active") and "integrity: ok" in shown
    assert "adapter_model.safetensors" in shown and "serving:   vLLM LoRA (loaded at run time as pixel@2)" in shown
    assert "pixel@1 is now active" in run("promote", "pixel", 1)
    assert "rolled back to pixel@2" in run("rollback", "pixel")
    assert "Removed pixel@1" in run("remove", "pixel", 1, "--yes")
    assert "no such version" in run("show", "pixel@1", code=2)
    assert "is active" in run("remove", "pixel", 2, "--yes", code=2)
    assert "Added pixel@3 (composite" in run("compose", "pixel", "pixel@2=1.0", "pixel@2=0.5")
    # A damaged file shows up in `show` and blocks promotion, with a one-line error.
    weights = tmp_path / "data" / "adapters" / "pixel" / "3" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    assert "DAMAGED" in run("show", "pixel@3")
    out = run("promote", "pixel", 3, code=2)
    assert "truncated" in out and out.count("\n") == 1


def test_cli_refusals_are_one_line(run, tiny_base, tmp_path):
    import torch

    folder = tmp_path / "pickled"
    folder.mkdir()
    torch.save({"w": torch.zeros(1)}, folder / "pytorch_model.bin")
    (folder / "config.json").write_text("{}")
    out = run("add", folder, "--character", "pixel", code=2)
    assert "pickles are never loaded" in out and "safetensors" in out and out.count("\n") == 1
    lora = train_tiny_lora(tiny_base, tmp_path / "lora", target_modules=("q_proj",))
    config = json.loads((lora / "adapter_config.json").read_text())
    config["target_modules"] = ["query_key_value"]
    (lora / "adapter_config.json").write_text(json.dumps(config))
    out = run("add", lora, "--character", "pixel", code=2)
    assert "target modules differ" in out and "query_key_value" in out
    assert "No stored versions" in run("list")


def test_cli_show_says_vllm_refuses_hybrid_versions(run, tiny_base, tmp_path):
    hybrid = train_tiny_lora(tiny_base, tmp_path / "hybrid", modules_to_save=["lm_head"])
    run("add", hybrid, "--character", "pixel")
    assert "local only (vLLM refuses LoRA adapters with modules_to_save" in run("show", "pixel@1")


def test_cli_merge_and_extract(run, tiny_base, tmp_path):
    lora = train_tiny_lora(tiny_base, tmp_path / "lora")
    full = train_tiny_full(tiny_base, tmp_path / "full")
    run("add", lora, "--character", "pixel")
    merged = run("merge", "pixel", 1)
    assert "Merged pixel@1 into pixel@2 (full; delta exact, lossless" in merged
    added = run("add", full, "--character", "pixel", "--delta", "int8")
    assert "Added pixel@3 (full, candidate) (delta int8, lossy" in added
    out = run("extract", "pixel", 3, "--rank", 4)
    assert "Extracted pixel@4 (LoRA r=4" in out and "relative Frobenius error per layer" in out
    assert "top-1 agreement" in out
    shown = json.loads(run("show", "pixel@4", "--json"))
    assert shown["kind"] == "lora" and shown["parent"] == 3 and shown["serving"].startswith("vLLM LoRA")
    assert "local only (a full fine-tune" in run("show", "pixel@3")
    assert 0 < shown["manifest"]["metrics"]["extract"]["mean_relative_error"] < 1
    assert "extract takes a full fine-tune" in run("extract", "pixel", 1, "--rank", 4, code=2)

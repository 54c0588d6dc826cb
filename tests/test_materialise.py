"""Full versions materialised as plain model folders (for a vLLM server of their own), on the tiny model."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner
from helpers_adapters import train_tiny_full, train_tiny_lora

from adapters.errors import RegistryError
from adapters.full_delta import load_full
from adapters.manifest import sha256_file
from adapters.materialise import MARKER, WEIGHTS, materialised_folder
from runtime.cli import cli


@pytest.fixture
def registry(make_engine, tiny_base):
    registry = make_engine(tiny_base).weights.registry
    registry.base = tiny_base
    return registry


@pytest.mark.parametrize("delta", ["int8", "exact", "none"])
def test_a_materialised_folder_is_the_model_the_local_generator_serves(registry, tiny_base, tmp_path, delta):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    full = train_tiny_full(tiny_base, tmp_path / "full", steps=2, lr=1e-2)
    version = registry.add(full, "pixel", delta=delta)
    assert (version.manifest.get("delta") or {}).get("encoding", "none") == delta  # stored the way asked
    folder = registry.materialise(version)
    assert folder == materialised_folder(registry.root, "pixel", version.number)
    assert {WEIGHTS, "config.json", "tokenizer.json", "tokenizer_config.json", MARKER} <= {p.name for p in folder.iterdir()}
    assert not list(folder.glob("delta*")) and not (folder / "manifest.json").exists()

    # Loaded by plain transformers, as vLLM would: the very tensors load_full rebuilds from the delta.
    plain = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True)
    served = load_full(version, tiny_base)
    ours, theirs = plain.state_dict(), served.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)
    base = tiny_base.model.state_dict()
    assert any(not torch.equal(ours[name], base[name].float()) for name in ours)  # really the fine-tune
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer("Ahoy")["input_ids"] == tiny_base.tokenizer("Ahoy")["input_ids"]


def test_materialising_is_cached_reproducible_and_cleaned_up_with_the_version(registry, tiny_base, tmp_path):
    full = train_tiny_full(tiny_base, tmp_path / "full", steps=1, lr=1e-2)
    version = registry.add(full, "pixel", delta="int8")
    other = registry.add(train_tiny_full(tiny_base, tmp_path / "other", seed=1, lr=1e-2), "pixel", delta="int8")
    folder = registry.materialise(version)
    first = sha256_file(folder / WEIGHTS)
    built_at = (folder / WEIGHTS).stat().st_mtime_ns
    assert registry.materialise(version) == folder and (folder / WEIGHTS).stat().st_mtime_ns == built_at  # reused

    # A damaged build (no marker, e.g. a hand-edited folder) is rebuilt, byte for byte the same.
    (folder / MARKER).unlink()
    (folder / WEIGHTS).write_bytes(b"garbage")
    assert registry.materialise(version) == folder and sha256_file(folder / WEIGHTS) == first

    other_folder = registry.materialise(other)
    assert sha256_file(other_folder / WEIGHTS) != first  # another version, other weights
    registry.remove("pixel", version.number)
    assert not folder.exists() and other_folder.exists()

    # Left behind by a process that removed a version (or died mid-build): swept when a registry opens.
    registry.remove("pixel", other.number)
    leftover = materialised_folder(registry.root, "pixel", other.number)
    leftover.mkdir()
    half_built = leftover.parent / ".tmp-999999999-abcd"
    half_built.mkdir()
    reopened = type(registry)(registry.root, registry.store, base=tiny_base)
    assert not leftover.exists() and not half_built.exists()
    assert reopened.versions("pixel") == []


def test_only_full_versions_are_materialised(registry, tiny_base, tmp_path):
    version = registry.add(train_tiny_lora(tiny_base, tmp_path / "lora"), "pixel")
    with pytest.raises(RegistryError) as error:
        registry.materialise(version)
    assert "lora version" in str(error.value) and "only full fine-tunes" in str(error.value)


def test_cli_materialises_and_show_says_where_each_version_is_served(monkeypatch, tiny_model_folder, tiny_base,
                                                                        tmp_path):
    monkeypatch.setenv("PERSONAE_BASE_MODEL", str(tiny_model_folder))
    runner = CliRunner()

    def run(*args, code=0):
        result = runner.invoke(cli, ["adapters", *map(str, args)], catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result.output

    run("add", train_tiny_full(tiny_base, tmp_path / "full"), "--character", "pixel", "--delta", "int8")
    run("add", train_tiny_lora(tiny_base, tmp_path / "lora"), "--character", "pixel")
    run("add", train_tiny_lora(tiny_base, tmp_path / "hybrid", modules_to_save=["lm_head"]), "--character", "pixel")
    shown = run("show", "pixel@1")
    assert "serving:   local only (a full fine-tune" in shown and "full_command or full_urls" in shown
    assert "vLLM LoRA (loaded at run time as pixel@2)" in run("show", "pixel@2")
    assert "local only (vLLM refuses LoRA adapters with modules_to_save" in run("show", "pixel@3")

    out = run("materialise", "pixel@1")
    folder = tmp_path / "data" / "adapters" / ".materialised" / "pixel@1"
    assert out.strip() == str(folder) and (folder / WEIGHTS).is_file()
    assert "only full fine-tunes" in run("materialise", "pixel@2", code=2)

    (tmp_path / "personae.toml").write_text('[plugins.vllm]\nfull_urls = { "pixel@1" = "http://10.0.0.7:8000" }\n')
    shown = json.loads(run("show", "pixel@1", "--json"))["serving"]
    assert shown.startswith("vLLM own endpoint http://10.0.0.7:8000") and f"materialised at {folder}" in shown
    (tmp_path / "personae.toml").write_text('backend = "vllm"\n[plugins.vllm]\nfull_command = "vllm serve"\n')
    shown = run("show", "pixel@1")
    assert "vLLM own endpoint, started by Personae on the materialised folder" in shown
    assert "backend now: vllm" in shown
    assert os.path.isdir(folder)

"""The adapter registry on real PEFT adapters: add, verify, states, refusals, crash safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers_adapters import train_tiny_full, train_tiny_lora

from adapters.errors import IncompatibleAdapter, IntegrityError, PickledWeights, RegistryError
from adapters.registry import Registry
from adapters.safety import check_compatible
from runtime.store import Store

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_base):
    """Real adapters trained a few steps on the tiny model (shared by the module's tests)."""
    root = tmp_path_factory.mktemp("trained")
    return {
        "lora": train_tiny_lora(tiny_base, root / "lora", seed=0),
        "lora2": train_tiny_lora(tiny_base, root / "lora2", seed=1, rank=4, target_modules=("q_proj", "o_proj")),
        "hybrid": train_tiny_lora(tiny_base, root / "hybrid", modules_to_save=["lm_head"]),
        "full": train_tiny_full(tiny_base, root / "full"),
    }


@pytest.fixture
def registry(tmp_path, tiny_base):
    store = Store(tmp_path / "data" / "personae.db")
    return Registry(tmp_path / "data" / "adapters", store, base=tiny_base)


def test_add_stores_peft_format_with_manifest_and_verifies(registry, trained, tiny_base):
    version = registry.add(trained["lora"], "pixel", training={"run": "r1"}, data_hash="abc")
    assert (version.character, version.number, version.kind, version.state) == ("pixel", 1, "lora", "candidate")
    assert version.folder == registry.root / "pixel" / "1"
    assert {"adapter_config.json", "adapter_model.safetensors", "manifest.json"} <= {
        p.name for p in version.folder.iterdir()}
    manifest = json.loads((version.folder / "manifest.json").read_text())
    assert manifest["kind"] == "lora" and manifest["base_fingerprint"] == tiny_base.fingerprint
    assert manifest["training"] == {"run": "r1"} and manifest["data_hash"] == "abc" and manifest["parent"] is None
    assert len(manifest["files"]["adapter_model.safetensors"]["sha256"]) == 64
    registry.verify(version)
    # The folder is PEFT's own format: PEFT loads it unchanged.
    import copy

    from peft import PeftModel

    model = PeftModel.from_pretrained(copy.deepcopy(tiny_base.model), str(version.folder))
    assert "default" in model.peft_config
    assert registry.add(trained["hybrid"], "pixel", parent=1).kind == "hybrid"
    assert [v.number for v in registry.versions("pixel")] == [1, 2]


def test_promote_rollback_remove_and_subscribers(registry, trained):
    seen, hooked = [], []

    class PM:
        class hook:
            @staticmethod
            def version_promoted(character_id, version, previous):
                hooked.append((character_id, version and version.number, previous and previous.number))

    registry.pm = PM()
    registry.subscribe(lambda character, version: seen.append((character, version and version.number)))
    for _ in range(3):
        registry.add(trained["lora"], "pixel", dedup=False)  # three copies, deliberately
    assert registry.active("pixel") is None
    registry.promote("pixel", 1)
    registry.promote("pixel", 2)
    assert registry.active("pixel").number == 2 and registry.get("pixel", 1).state == "retired"
    assert registry.get("pixel").number == 2
    assert registry.rollback("pixel").number == 1
    assert registry.get("pixel", 2).state == "rejected" and registry.active("pixel").number == 1
    assert registry.rollback("pixel") is None  # nothing before 1: back to the base
    assert registry.active("pixel") is None
    assert seen == [("pixel", 1), ("pixel", 2), ("pixel", 1), ("pixel", None)]
    assert hooked == [("pixel", 1, None), ("pixel", 2, 1), ("pixel", 1, 2), ("pixel", None, 1)]
    with pytest.raises(RegistryError, match="no active version"):
        registry.rollback("pixel")
    registry.promote("pixel", 3)
    with pytest.raises(RegistryError, match="is active"):
        registry.remove("pixel", 3)
    registry.remove("pixel", 1)
    assert not (registry.root / "pixel" / "1").exists()
    assert [v.number for v in registry.versions("pixel")] == [2, 3]
    assert registry.add(trained["lora"], "pixel", dedup=False).number == 4  # numbers are never reused
    registry.reject("pixel", 4, "audit: leakage up")
    assert registry.get("pixel", 4).state == "rejected" and registry.get("pixel", 4).reason == "audit: leakage up"
    registry.set_audit("pixel", 3, {"aligned": 0.9})
    assert registry.get("pixel", 3).audit["aligned"] == 0.9
    assert json.loads((registry.root / "pixel" / "3" / "manifest.json").read_text())["audit"]["aligned"] == 0.9
    registry.verify(registry.get("pixel", 3))  # the audit rewrite keeps the hashes valid
    # States survive a restart (they live in SQLite).
    again = Registry(registry.root, registry.store)
    assert again.active("pixel").number == 3 and again.get("pixel", 2).state == "rejected"


def test_activate_on_add_and_mark_failed_falls_back(registry, trained):
    registry.add(trained["lora"], "quill", activate=True)
    registry.add(trained["lora"], "quill", activate=True, dedup=False)
    assert registry.active("quill").number == 2
    registry.mark_failed("quill", 2, "failed to load")
    assert registry.get("quill", 2).state == "failed" and registry.active("quill").number == 1
    with pytest.raises(RegistryError, match="failed"):
        registry.promote("quill", 2)


def test_tampered_and_truncated_files_fail_the_hash_check(registry, trained):
    first = registry.add(trained["lora"], "pixel")
    second = registry.add(trained["lora"], "pixel", dedup=False)
    weights = first.folder / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256 differs"):
        registry.verify(first)
    with pytest.raises(IntegrityError):
        registry.promote("pixel", 1)  # a damaged version is never activated
    config = second.folder / "adapter_config.json"
    config.write_bytes(config.read_bytes()[:20])
    with pytest.raises(IntegrityError, match="truncated"):
        registry.verify(second)
    # Other versions are untouched and still load.
    third = registry.add(trained["lora"], "pixel")
    registry.verify(third)
    assert registry.get("pixel", 1).state == "candidate"


def test_pickles_are_refused_without_unpickling(registry, tmp_path, monkeypatch, trained):
    import torch

    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "adapter_config.json").write_text((trained["lora"] / "adapter_config.json").read_text())
    torch.save({"w": torch.zeros(2)}, folder / "adapter_model.bin")

    def forbidden(*args, **kwargs):
        raise AssertionError("torch.load must never be called on user weights")

    monkeypatch.setattr(torch, "load", forbidden)
    import pickle

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    with pytest.raises(PickledWeights, match="convert them to safetensors"):
        registry.add(folder, "pixel")
    with pytest.raises(PickledWeights, match="adapter_model.bin"):
        check_compatible(folder, registry.base)
    assert registry.versions() == [] and list((registry.root).glob("pixel/*")) == []
    # A stray pickle beside safetensors weights (a Trainer's training_args.bin) is left behind.
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for path in trained["lora"].iterdir():
        (mixed / path.name).write_bytes(path.read_bytes())
    torch.save({"lr": 1}, mixed / "training_args.bin")
    version = registry.add(mixed, "pixel")
    assert not (version.folder / "training_args.bin").exists() and version.manifest["skipped"] == ["training_args.bin"]


def _edit_config(source: Path, target: Path, **changes) -> Path:
    target.mkdir()
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    config = json.loads((source / "adapter_config.json").read_text())
    config.update(changes)
    (target / "adapter_config.json").write_text(json.dumps(config))
    return target


def test_mismatched_adapters_are_refused_naming_the_part(registry, trained, tmp_path, tiny_base):
    import torch
    from safetensors.torch import load_file, save_file

    wrong_targets = _edit_config(trained["lora"], tmp_path / "targets", target_modules=["c_attn"])
    with pytest.raises(IncompatibleAdapter, match=r"target modules differ: \['c_attn'\]"):
        registry.add(wrong_targets, "pixel")
    wrong_shapes = _edit_config(trained["lora"], tmp_path / "shapes")
    tensors = load_file(str(wrong_shapes / "adapter_model.safetensors"))
    tensors = {k: torch.zeros(v.shape[0], 32) if "lora_A" in k else v for k, v in tensors.items()}
    save_file(tensors, str(wrong_shapes / "adapter_model.safetensors"))
    with pytest.raises(IncompatibleAdapter, match=r"tensor shapes differ: .*q_proj.lora_A \[8, 32\] vs base \[64, 64\]"):
        registry.add(wrong_shapes, "pixel")
    stored = registry.add(trained["lora"], "pixel")
    other = Registry(registry.root, registry.store, base_fingerprint="sha256:someotherbase")
    with pytest.raises(IncompatibleAdapter, match="base fingerprints differ"):
        other.verify(stored)
    with pytest.raises(IncompatibleAdapter, match="base fingerprints differ"):
        other.add(stored.folder, "quill")
    with pytest.raises(IncompatibleAdapter, match="base fingerprints differ"):
        check_compatible(stored.folder, type("Base", (), {"folder": tiny_base.folder, "fingerprint": "sha256:x"})())
    assert check_compatible(trained["full"], tiny_base) == "full"
    assert [v.number for v in registry.versions()] == [1]  # refusals stored nothing


def test_bad_names_and_sources(registry, tmp_path):
    with pytest.raises(RegistryError, match="not a valid character id"):
        registry.add(tmp_path, "../evil")
    with pytest.raises(RegistryError, match="no such folder"):
        registry.add(tmp_path / "missing", "pixel")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RegistryError, match="neither a PEFT adapter"):
        registry.add(tmp_path / "empty", "pixel")
    with pytest.raises(RegistryError, match="no such version"):
        registry.get("pixel", 9)


ADD_SCRIPT = """
import sys
from pathlib import Path
from adapters.registry import Registry
from runtime.store import Store
root, source = Path(sys.argv[1]), sys.argv[2]
Registry(root, Store(root.parent / "personae.db")).add(source, "pixel")
"""


def test_process_killed_mid_add_leaves_registry_consistent(registry, trained, tmp_path):
    registry.add(trained["lora"], "pixel", activate=True)
    # Make the source big enough to have several files to copy, and slow the copy down.
    source = tmp_path / "slow"
    source.mkdir()
    for path in trained["lora"].iterdir():
        (source / path.name).write_bytes(path.read_bytes())
    (source / "notes.txt").write_text("extra file")
    env = {**os.environ, "PERSONAE_REGISTRY_TEST_PAUSE": "30", "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-c", ADD_SCRIPT, str(registry.root), str(source)], env=env)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            temporary = [p for p in (registry.root / "pixel").glob(".tmp-*") if any(p.iterdir())]
            if temporary:
                break
            time.sleep(0.05)
        assert temporary, "the add never started copying"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
    assert list(temporary[0].iterdir()) and not (temporary[0] / "manifest.json").exists()
    # The half version is invisible; the active one is untouched; a restart sweeps the leftovers.
    assert [v.number for v in registry.versions("pixel")] == [1]
    restarted = Registry(registry.root, registry.store, base=registry.base)
    assert not list((registry.root / "pixel").glob(".tmp-*"))
    assert [v.number for v in restarted.versions("pixel")] == [1] and restarted.active("pixel").number == 1
    restarted.verify(restarted.active("pixel"))
    assert restarted.add(trained["lora"], "pixel", dedup=False).number == 2


def test_finished_folder_missing_from_database_is_recovered(registry, trained):
    version = registry.add(trained["lora"], "pixel")
    # As if the process died after the rename but before the database row was written.
    registry.store.write(lambda: registry.store.db.execute("delete from adapter_versions"))
    recovered = Registry(registry.root, registry.store)
    assert [(v.number, v.state) for v in recovered.versions("pixel")] == [(1, "candidate")]
    recovered.verify(recovered.get("pixel", 1))
    import shutil

    shutil.rmtree(version.folder)
    assert Registry(registry.root, registry.store).get("pixel", 1).state == "failed"


def test_character_shipped_weights(registry, trained, tmp_path):
    from adapters.character import weights_from_character
    from runtime.characters import Character

    package = tmp_path / "charpkg"
    (package / "weights").mkdir(parents=True)
    for path in trained["lora"].iterdir():
        (package / "weights" / path.name).write_bytes(path.read_bytes())
    card = package / "card.png"
    character = Character(name="Mara", source=str(card), extensions={"personae": {"weights": "weights"}})
    assert weights_from_character(character) == (package / "weights").resolve()
    assert weights_from_character(Character(name="X")) is None
    version = registry.add_from_character(character, activate=True)
    assert version.state == "active" and version.kind == "lora"
    assert registry.add_from_character(character).number == 1  # the same files are not stored twice
    broken = Character(name="Y", source=str(card), extensions={"personae": {"weights": "nope"}})
    with pytest.raises(RegistryError, match="is not a folder"):
        weights_from_character(broken)


@pytest.mark.real_model
def test_real_smollm2_adapter_add_verify_load(tmp_path, real_base):
    import copy

    import torch
    from peft import PeftModel

    folder = train_tiny_lora(real_base, tmp_path / "real-lora", steps=1, rank=8, texts=["Ahoy there, sailor!"])
    registry = Registry(tmp_path / "adapters", Store(tmp_path / "personae.db"), base=real_base)
    version = registry.add(folder, "captain-mara-voss", activate=True)
    assert check_compatible(version.folder, real_base) == "lora"
    checked = registry.checked("captain-mara-voss")
    model = PeftModel.from_pretrained(copy.deepcopy(real_base.model), str(checked.folder))
    ids = real_base.tokenizer("Ahoy, captain!", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        adapted = model(ids).logits
        with model.disable_adapter():
            plain = model(ids).logits
    assert not torch.allclose(adapted, plain)  # the trained adapter changes the output


def test_manifests_are_read_once_per_change_not_per_turn(registry, trained, monkeypatch):
    import adapters.registry as module

    registry.add(trained["lora"], "pixel", activate=True)
    reads = []
    real = module.read_manifest
    monkeypatch.setattr(module, "read_manifest", lambda folder: reads.append(folder) or real(folder))
    for _ in range(5):
        assert registry.active("pixel").manifest["kind"] == "lora"
    assert len(reads) <= 1  # a turn asks for the active version; the manifest stays in memory
    before = len(reads)
    registry.set_audit("pixel", 1, {"aligned": 0.9})
    for _ in range(3):
        assert registry.active("pixel").manifest["audit"]["aligned"] == 0.9  # a change is seen at once
    assert len(reads) == before + 1

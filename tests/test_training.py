"""Training on the tiny model: LoRA / hybrid / full candidates in the real registry, the loss gate, faults."""

from __future__ import annotations

import errno
import json

import pytest
from click.testing import CliRunner
from training_helpers import log_many

from runtime.chat.engine import Turn
from runtime.cli import cli
from runtime.training import TrainingBusy, registry_for, retrain, train
from runtime.training.config import TrainingConfig, TrainingError
from runtime.training.runs import character_lock, runs

FAST = dict(max_steps=2, batch_size=4, max_length=96, lr=1e-3, warmup=0, threads=1)


@pytest.fixture
def engine(make_engine, tiny_base):
    engine = make_engine(tiny_base)  # the serving side's registry and hot swap
    log_many(engine.store, 16)
    return engine


@pytest.mark.parametrize("method", ["lora", "hybrid", "full"])
def test_each_method_registers_a_candidate_with_metrics_and_a_loss_plot(engine, method):
    result = train(engine, "pixel", method, config=TrainingConfig(method=method, **FAST), progress=False)
    version = result.version
    assert version.state == "candidate" and version.kind == method and version.number == 1
    files = set(version.manifest["files"])
    if method == "full":
        assert "config.json" in files and any(name.endswith(".safetensors") for name in files)
    else:
        assert {"adapter_config.json", "adapter_model.safetensors"} <= files
        adapter_config = json.loads((version.folder / "adapter_config.json").read_text())
        assert adapter_config["r"] == 16
        assert set(adapter_config["target_modules"]) >= {"q_proj", "v_proj", "up_proj", "down_proj"}
        assert bool(adapter_config.get("modules_to_save")) == (method == "hybrid")
    metrics = version.manifest["metrics"]
    for key in ("train_loss", "val_loss", "steps", "seconds", "seconds_per_step", "tokens_per_s", "peak_memory_mb",
                "bytes_on_disk"):
        assert key in metrics and metrics[key] is not None
    assert metrics["steps"] == 2 and metrics["bytes_on_disk"] > 0 and metrics["tokens_per_s"] > 0
    assert version.manifest["data_hash"].startswith("sha256:")
    assert version.manifest["training"]["method"] == method and version.manifest["training"]["rank"] == 16
    assert result.loss_plot.is_file() and result.loss_plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert registry_for(engine).active("pixel") is None  # a candidate never replaces anything by itself
    # The serving side can load what was trained: a reply pinned to the candidate.
    reply = engine.reply(Turn(platform="test", channel="c9", user_id="t", text="Hi!", character=engine.catalog.get("pixel"),
                              version=str(version.number), sampling={"temperature": 0, "max_new_tokens": 3}))
    reply.result()
    assert reply.message["weights_version"] == version.label


def test_retrain_gates_on_validation_loss_promotes_then_rejects_a_worse_one(engine):
    registry = registry_for(engine)
    first = retrain(engine, "pixel", config=TrainingConfig(gate="loss", **FAST), progress=False)
    assert first.status == "promoted", first.reason
    assert first.reason.startswith("validation loss gate: validation loss")
    assert registry.active("pixel").number == first.version.number
    # An impossible bar: the candidate must halve the active version's loss.
    second = retrain(engine, "pixel", config=TrainingConfig(gate="loss", gate_tolerance=-0.5, **FAST), progress=False,
                     in_subprocess=False)  # the generator now runs: in-process kept on purpose (faster test)
    assert second.status == "rejected" and "worse than" in second.reason
    assert registry.get("pixel", second.version.number).state == "rejected"
    assert registry.active("pixel").number == first.version.number
    assert second.metrics["reference"] == registry.active("pixel").label
    states = [row["state"] for row in runs(engine.store, "pixel")]
    assert states == ["rejected", "promoted"]


def test_too_few_examples_is_a_clear_error_and_nothing_is_registered(make_engine, tiny_base):
    engine = make_engine(tiny_base)
    log_many(engine.store, 1)
    outcome = retrain(engine, "pixel", config=TrainingConfig(**FAST), progress=False)
    assert outcome.status == "failed" and "log more conversations" in outcome.reason
    assert registry_for(engine).versions("pixel") == []
    result = CliRunner().invoke(cli, ["train", "pixel", "--max-steps", "1"],
                                env={"PERSONAE_BASE_MODEL": str(tiny_base.folder)})
    assert result.exit_code == 2 and "usable" in result.output


def test_full_disk_fails_clearly_and_leaves_the_active_version(engine, monkeypatch, tiny_base, tmp_path):
    from helpers_adapters import train_tiny_lora

    from adapters.registry import Registry

    registry = registry_for(engine)
    active = registry.add(train_tiny_lora(tiny_base, tmp_path / "active", steps=1), "pixel", activate=True)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Registry, "_copy_files", staticmethod(disk_full))
    outcome = retrain(engine, "pixel", config=TrainingConfig(**FAST), progress=False, in_subprocess=False)
    assert outcome.status == "failed" and "no space left" in outcome.reason
    assert registry.active("pixel").number == active.number
    assert [v.number for v in registry.versions("pixel")] == [active.number]
    assert not list((engine.settings.data_path / "training" / "pixel").glob("staging-*"))


def test_one_training_per_character_at_a_time(engine):
    with character_lock(engine.settings, "pixel"):
        with pytest.raises(TrainingBusy, match="already training"):
            retrain(engine, "pixel", config=TrainingConfig(**FAST), progress=False)
    with character_lock(engine.settings, "pixel"):  # released: free again
        pass


def test_bad_configuration_is_refused():
    with pytest.raises(TrainingError, match="unknown training method"):
        TrainingConfig(method="qlora")
    with pytest.raises(TrainingError, match="rank"):
        TrainingConfig(rank=0)
    assert TrainingConfig(method="full").learning_rate < TrainingConfig().learning_rate


def test_the_audit_gate_decides_when_installed(make_engine, tiny_base):
    pytest.importorskip("runtime.audit")
    engine = make_engine(tiny_base,
                         audit={"max_new_tokens": 4, "base_max_new_tokens": 4, "gate_probes": 1})
    log_many(engine.store, 12)
    outcome = retrain(engine, "pixel", config=TrainingConfig(**FAST), progress=False)  # gate="auto"
    assert outcome.status in ("promoted", "rejected") and outcome.reason.startswith("audit gate: ")
    assert "alignment" in outcome.reason and "leakage" in outcome.reason
    row = runs(engine.store, "pixel")[0]
    assert json.loads(row["gate"])["method"] == "audit" and row["state"] == outcome.status
    state = registry_for(engine).get("pixel", outcome.version.number).state
    assert state == ("active" if outcome.status == "promoted" else "rejected")

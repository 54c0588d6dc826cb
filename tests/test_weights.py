"""WeightsManager: registry versions served by the generator (base, pinned, full, broken ones)."""

from __future__ import annotations

import pytest
from helpers_adapters import train_tiny_full, train_tiny_lora
from package_helpers import installed

from runtime.chat.engine import Turn
from runtime.generation.types import BASE_ADAPTER
from runtime.refs import WeightsRef


def turn(engine, character, channel="c1", version=None):
    return Turn(platform="test", channel=channel, user_id="u1", text="Hello", character=engine.catalog.get(character),
                version=version,
                sampling={"temperature": 0, "max_new_tokens": 6})


@pytest.fixture(scope="module")
def loras(tiny_base, tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    return [train_tiny_lora(tiny_base, root / f"v{i}", steps=2, seed=i) for i in range(2)]


def test_no_version_means_base_and_pinned_versions_are_served(make_engine, tiny_base, loras):
    engine = make_engine(tiny_base)
    with engine.weights.acquire(WeightsRef.parse("pixel")) as weights:
        assert (weights.version, weights.adapter) == ("base", BASE_ADAPTER)
    registry = engine.weights.registry
    registry.add(loras[0], "pixel", activate=True)
    registry.add(loras[1], "pixel", activate=True)
    pinned = engine.reply(turn(engine, "pixel", version=1))
    active = engine.reply(turn(engine, "pixel", channel="c2"))
    pinned.result(), active.result()
    assert pinned.message["weights_version"] == "lora:pixel@1"
    assert active.message["weights_version"] == "lora:pixel@2"
    assert engine.weights.status()["in_flight"] == {}  # every acquire was released


def test_full_fine_tune_is_served_as_its_own_model(make_engine, tiny_base, tmp_path):
    import torch

    engine = make_engine(tiny_base)
    folder = train_tiny_full(tiny_base, tmp_path / "full", steps=2, lr=5e-3)
    engine.weights.registry.add(folder, "professor-quill", activate=True)
    reply = engine.reply(turn(engine, "professor-quill"))
    reply.result()
    assert reply.message["weights_version"] == "full:professor-quill@1"
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ids = torch.tensor([reply.stream.request.input_ids])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                         repetition_penalty=1.1, pad_token_id=tiny_base.tokenizer.pad_token_id)
    assert reply.stream.text == tiny_base.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert engine.generator.loaded()["models"] == ["full:professor-quill@1"]


def test_tampered_active_version_is_marked_failed_and_the_previous_one_answers(make_engine, tiny_base, loras):
    first = make_engine(tiny_base)
    registry = first.weights.registry
    registry.add(loras[0], "pixel", activate=True)
    broken = registry.add(loras[1], "pixel", activate=True)
    with open(broken.folder / "adapter_model.safetensors", "ab") as handle:
        handle.write(b"tampered")
    second = make_engine(tiny_base)  # e.g. a restarted server: nothing loaded yet
    reply = second.reply(turn(second, "pixel"))
    reply.result()
    assert reply.message["weights_version"] == "lora:pixel@1"
    assert second.weights.registry.get("pixel", 2).state == "failed"


def test_weights_a_character_package_ships_are_served_without_a_command(make_engine, tiny_base, loras, tmp_path):
    import shutil

    from runtime.characters import Character

    package = tmp_path / "ahab_package"
    shutil.copytree(loras[1], package / "weights")
    ahab = Character(name="Ahab", description="A captain.", source=str(package / "card.png"),
                     extensions={"personae": {"weights": "weights"}})
    broken = Character(name="Ishmael", source=str(package / "card.png"),
                       extensions={"personae": {"weights": "missing"}})

    engine = make_engine(tiny_base)
    with installed(engine, ahab, broken):
        first = engine.reply(turn(engine, "ahab"))
        first.result()
        assert first.message["weights_version"] == "lora:ahab@1"
        registry = engine.weights.registry
        assert [v.state for v in registry.versions("ahab")] == ["active"]
        assert registry.versions("ahab")[0].manifest["training"] == {"source": "character package"}
        again = engine.reply(turn(engine, "ahab", channel="c2"))
        again.result()
        assert again.message["weights_version"] == "lora:ahab@1" and len(registry.versions("ahab")) == 1
        fallback = engine.reply(turn(engine, "ishmael"))  # a package whose weights folder is missing answers on the base
        fallback.result()
        assert fallback.message["weights_version"] == "base" and registry.versions("ishmael") == []


def test_chats_that_start_together_all_get_the_packaged_weights(make_engine, tiny_base, loras, tmp_path):
    """Twelve first replies at once: every one waits for the registration instead of answering on the base."""
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    from runtime.characters import Character

    shutil.copytree(loras[1], tmp_path / "weights")
    ahab = Character(name="Ahab", description="A captain.", source=str(tmp_path / "card.png"),
                     extensions={"personae": {"weights": "weights"}})

    engine = make_engine(tiny_base)
    with installed(engine, ahab):
        with ThreadPoolExecutor(max_workers=12) as pool:
            replies = list(pool.map(lambda i: engine.reply(turn(engine, "ahab", channel=f"together-{i}")), range(12)))
        for reply in replies:
            reply.result()
        assert {reply.message["weights_version"] for reply in replies} == {"lora:ahab@1"}
        assert len(engine.weights.registry.versions("ahab")) == 1

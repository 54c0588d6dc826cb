"""The built-in characters ship LoRA weights made by plugins/characters/make_weights.py; they become version 1."""

from __future__ import annotations

import dataclasses
import json

import pytest

from plugins.characters import CARDS_DIR
from plugins.characters.make_weights import CHARACTERS
from runtime.chat.engine import Turn
from runtime.characters import load_card


def ask(engine, character, text="Hello!"):
    reply = engine.reply(Turn(platform="test", channel="shipped", user_id="u", user_name="Ann", text=text,
                              character=character, sampling={"temperature": 0, "max_new_tokens": 24}))
    reply.result()
    return reply


def test_every_built_in_card_points_at_small_fp16_lora_weights():
    from safetensors import safe_open

    for character_id in CHARACTERS:
        card = load_card(CARDS_DIR / f"{character_id}.png")
        folder = CARDS_DIR / card.extensions["personae"]["weights"]
        assert folder.is_dir() and folder.parent.name == "weights", character_id
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["peft_type"] == "LORA" and config["r"] <= 16
        weights = folder / "adapter_model.safetensors"
        assert weights.stat().st_size < 2_000_000  # a LoRA, not a model
        with safe_open(str(weights), "pt") as handle:
            assert {str(handle.get_slice(k).get_dtype()) for k in handle.keys()} == {"F16"}
        assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]


def test_the_script_makes_weights_a_card_ships_and_the_registry_adopts_them(make_engine, tiny_base,
                                                                             tiny_model_folder, tmp_path):
    from plugins.characters.make_weights import main
    from runtime.hookspecs import hookimpl

    cards = tmp_path / "package" / "cards"
    main(["--base", str(tiny_model_folder), "--characters", "pixel", "--limit", "2", "--samples", "2",
          "--epochs", "1", "--min-examples", "1", "--out", str(cards / "weights"),
          "--record", str(tmp_path / "record.json")])
    record = json.loads((tmp_path / "record.json").read_text())[0]
    assert record["character"] == "pixel" and record["train_examples"] >= 1 and record["bytes"] > 0
    assert record["bootstrap"]["turns_asked"] >= 2
    # The built-in card, moved next to the weights the script wrote, as a package would ship it.
    shipped = dataclasses.replace(load_card(CARDS_DIR / "pixel.png"), name="Pixel Shipped",
                                  source=str(cards / "pixel.png"))
    assert shipped.extensions["personae"]["weights"] == "weights/pixel"

    class Package:
        @hookimpl
        def register_characters(self, register):
            register(shipped)

    engine = make_engine(tiny_base)
    package = Package()
    engine.pm.register(package, name="shipped-package")
    try:
        engine.catalog.reload()
        character = engine.catalog.get("pixel-shipped")
        assert engine.registry.versions(character.id) == []
        first = ask(engine, character)
        assert first.message["weights_version"] == f"lora:{character.id}@1"
        versions = engine.registry.versions(character.id)
        assert [(v.number, v.state) for v in versions] == [(1, "active")]
        assert versions[0].manifest["training"] == {"source": "character package"}
        again = ask(engine, character, "And again?")
        assert again.message["weights_version"] == first.message["weights_version"]
        assert len(engine.registry.versions(character.id)) == 1  # adopted once, not on every turn
    finally:
        engine.pm.unregister(package)


@pytest.mark.real_model
def test_make_chat_serves_the_shipped_weights_as_version_1_on_real_smollm2(make_engine, real_base):
    from adapters.registry import source_hash

    engine = make_engine(real_base)
    for character_id in CHARACTERS:
        character = engine.catalog.get(character_id)
        assert engine.registry.versions(character_id) == []
        reply = ask(engine, character, "Who are you?")
        assert reply.message["weights_version"] == f"lora:{character_id}@1", character_id
        assert reply.message["text"].strip()
        version = engine.registry.active(character_id)
        assert version.number == 1 and version.kind == "lora"
        folder = CARDS_DIR / character.extensions["personae"]["weights"]
        assert version.manifest["source_sha256"] == source_hash(folder)  # the very files in the package

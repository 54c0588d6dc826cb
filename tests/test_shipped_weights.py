"""plugins/characters/make_weights.py makes LoRA weights a card can ship; the registry adopts them as version 1."""

from __future__ import annotations

import dataclasses
import json

import pytest
from package_helpers import installed

from plugins.characters import CARDS_DIR
from runtime.chat.engine import Turn
from runtime.characters import load_card


def ask(engine, character, text="Hello!"):
    reply = engine.reply(Turn(platform="test", channel="shipped", user_id="u", user_name="Ann", text=text,
                              character=character, sampling={"temperature": 0, "max_new_tokens": 24}))
    reply.result()
    return reply


def test_the_script_makes_weights_a_card_ships_and_the_registry_adopts_them(make_engine, tiny_base,
                                                                             tiny_model_folder, tmp_path):
    from plugins.characters.make_weights import main

    cards = tmp_path / "package" / "cards"
    main(["--base", str(tiny_model_folder), "--characters", "pixel", "--limit", "2", "--samples", "2",
          "--epochs", "1", "--min-examples", "1", "--out", str(cards / "weights"), "--trust-written",
          "--example-share", "0", "--record", str(tmp_path / "record.json")])
    record = json.loads((tmp_path / "record.json").read_text())[0]
    assert record["character"] == "pixel" and record["train_examples"] >= 1 and record["bytes"] > 0
    assert record["config"]["example_share"] == 0 and record["card_examples"] == 3  # Pixel's 3, once each
    assert record["config"]["audit_filter"] is False
    assert "misaligned" not in record["written"]["dropped"]  # --trust-written: the author's voice is kept
    assert record["bootstrap"]["turns_asked"] >= 2
    # The built-in card, moved next to the weights the script wrote, as a package would ship it.
    pixel = load_card(CARDS_DIR / "pixel.png")
    personae = {**pixel.extensions["personae"], "weights": "weights/pixel"}  # what make_cards writes once shipped
    shipped = dataclasses.replace(pixel, name="Pixel Shipped", source=str(cards / "pixel.png"),
                                  extensions={**pixel.extensions, "personae": personae})
    from safetensors import safe_open

    weights = cards / "weights" / "pixel" / "adapter_model.safetensors"
    assert weights.stat().st_size < 2_000_000  # a LoRA, not a model
    with safe_open(str(weights), "pt") as handle:
        assert {str(handle.get_slice(k).get_dtype()) for k in handle.keys()} == {"F16"}

    engine = make_engine(tiny_base)
    with installed(engine, shipped):
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


BUILT_INS = ("pixel", "captain-mara-voss", "professor-quill")


def test_the_built_in_cards_ship_small_portable_fp16_loras():
    from safetensors import safe_open

    from adapters.character import weights_from_character

    for character_id in BUILT_INS:
        card = load_card(CARDS_DIR / f"{character_id}.png")
        assert card.extensions["personae"]["weights"] == f"weights/{character_id}"
        folder = weights_from_character(card)
        config = json.loads((folder / "adapter_config.json").read_text())
        # Nothing of the machine that made them: the base by its published id, modules in a fixed order.
        assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert config["target_modules"] == sorted(config["target_modules"]) and config["r"] == 8
        weights = folder / "adapter_model.safetensors"
        assert weights.stat().st_size < 6_000_000  # a LoRA, not a model
        with safe_open(str(weights), "pt") as handle:
            assert {str(handle.get_slice(k).get_dtype()) for k in handle.keys()} == {"F16"}


def test_on_another_base_the_built_ins_answer_with_their_card_and_store_nothing(make_engine, tiny_base, caplog):
    engine = make_engine(tiny_base)
    with caplog.at_level("WARNING", logger="runtime.chat.weights"):
        reply = ask(engine, engine.catalog.get("pixel"))
    assert reply.message["weights_version"] == "base"
    assert engine.registry.versions("pixel") == []
    assert any("made for another base model" in r.getMessage() for r in caplog.records)


@pytest.mark.real_model
def test_on_smollm2_the_built_ins_answer_with_their_shipped_weights_as_version_1(make_engine, real_base):
    engine = make_engine(real_base)
    for character_id in BUILT_INS:
        reply = ask(engine, engine.catalog.get(character_id), "Tell me something about where you live.")
        assert reply.message["weights_version"] == f"lora:{character_id}@1", reply.message
        [version] = engine.registry.versions(character_id)
        assert (version.number, version.state, version.kind) == (1, "active", "lora")
        assert version.manifest["training"] == {"source": "character package"}
        assert reply.message["text"].strip()
    engine.registry.rollback("pixel")  # back to the card alone, the operator's choice, kept
    again = ask(engine, engine.catalog.get("pixel"), "And now?")
    assert again.message["weights_version"] == "base"
    assert [v.state for v in engine.registry.versions("pixel")] == ["rejected"]

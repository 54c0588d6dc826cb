"""plugins/characters/make_weights.py makes LoRA weights a card can ship; the registry adopts them as version 1."""

from __future__ import annotations

import dataclasses
import json

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
    from runtime.hookspecs import hookimpl

    cards = tmp_path / "package" / "cards"
    main(["--base", str(tiny_model_folder), "--characters", "pixel", "--limit", "2", "--samples", "2",
          "--epochs", "1", "--min-examples", "1", "--out", str(cards / "weights"),
          "--record", str(tmp_path / "record.json")])
    record = json.loads((tmp_path / "record.json").read_text())[0]
    assert record["character"] == "pixel" and record["train_examples"] >= 1 and record["bytes"] > 0
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

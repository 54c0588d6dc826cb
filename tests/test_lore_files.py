"""Cards and lorebooks from other tools: PNG chunk round trips, .charx, SillyTavern world info, group greetings."""

from __future__ import annotations

import base64
import copy
import io
import json
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from runtime.characters import card_dict, load_card, parse_card, save_card
from runtime.characters.card import CardError
from runtime.characters.lorebook import AT_DEPTH, ScanSettings, entries, scan
from runtime.characters.png_chunks import chunks, keyword
from runtime.characters.worldinfo import attach, load_world_info
from runtime.cli import cli

FIXTURES = Path(__file__).parent / "fixtures" / "cards"


def fixture(name):
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def b64(card):
    return base64.b64encode(json.dumps(card, ensure_ascii=False).encode()).decode()


def png_with(texts: dict, extra_itxt=True) -> bytes:
    """A PNG as other tools write it: card chunks plus unrelated metadata (Software, iTXt comment, pHYs)."""
    info = PngInfo()
    info.add_text("Software", "Chub exporter 2.1")
    if extra_itxt:
        info.add_itxt("Comment", "ünïcödé comment", lang="de", tkey="Kommentar")
    for key, value in texts.items():
        info.add_text(key, value)
    out = io.BytesIO()
    Image.new("RGB", (6, 4), "teal").save(out, format="PNG", pnginfo=info, dpi=(144, 144))
    return out.getvalue()


def non_card_chunks(data: bytes):
    return [(k, b) for k, b in chunks(data) if (keyword(k, b) or "").lower() not in ("chara", "ccv3")]


def card_chunks(data: bytes) -> dict:
    return {keyword(k, b): b.split(b"\0", 1)[1].decode("latin-1") for k, b in chunks(data)
            if (keyword(k, b) or "").lower() in ("chara", "ccv3")}


def test_png_with_disagreeing_chunks_round_trips_losing_nothing(tmp_path):
    v3 = fixture("nomad-v3.json")
    old_v2 = {"spec": "chara_card_v2", "spec_version": "2.0", "data": {"name": "Amaru (old)", "description": "older"}}
    source = tmp_path / "amaru.png"
    source.write_bytes(png_with({"chara": b64(old_v2), "ccv3": b64(v3)}))
    character = load_card(source)
    assert character.name == "Amaru Quispe" and character.spec == "chara_card_v3"  # ccv3 wins
    assert card_dict(character) == v3
    out = tmp_path / "out.png"
    save_card(character, out)
    written = out.read_bytes()
    # Unchanged: both card chunks exactly as read (V2-only apps still see their own 'chara').
    assert card_chunks(written) == {"chara": b64(old_v2), "ccv3": b64(v3)}
    assert non_card_chunks(written) == non_card_chunks(source.read_bytes())  # Software, iTXt, pHYs, pixels
    assert card_dict(load_card(out)) == v3
    # Edited: ccv3 carries the edit and chara is rewritten from it, so the two agree again.
    character.description = "Ñandú hunter. 山."
    save_card(character, out)
    chunks_now = {k: json.loads(base64.b64decode(v)) for k, v in card_chunks(out.read_bytes()).items()}
    edited = "Ñandú hunter. 山."
    assert chunks_now["ccv3"]["data"]["description"] == chunks_now["chara"]["data"]["description"] == edited
    assert chunks_now["ccv3"]["data"]["group_only_greetings"] == v3["data"]["group_only_greetings"]
    assert non_card_chunks(out.read_bytes()) == non_card_chunks(source.read_bytes())


@pytest.mark.parametrize("suffix", [".json", ".png"])
def test_null_book_non_ascii_and_sillytavern_extras_round_trip(tmp_path, suffix):
    for name in ("nomad-v3-nobook.json", "sailor-st-v2.json"):
        card = fixture(name)
        character = parse_card(copy.deepcopy(card), source=name)
        path = tmp_path / (name + suffix)
        save_card(character, path)
        again = load_card(path)
        # A PNG's reader prefers the ccv3 chunk; asked for the card's own spec it gives the card back whole:
        # null book stays null, SillyTavern's top-level V1 copies, create_date, extensions... all kept.
        assert card_dict(again, card["spec"]) == card
        if suffix == ".json":
            assert "Søren" in path.read_text(encoding="utf-8") or "Amaru" in path.read_text(encoding="utf-8")
    assert fixture("nomad-v3-nobook.json")["data"]["character_book"] is None


def charx_bytes(icon: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("card.json", json.dumps(fixture("nomad-v3.json"), ensure_ascii=False))
        archive.writestr("assets/icon/images/main.png", icon)
        archive.writestr("assets/emotion/images/happy.webp", b"RIFF....WEBPVP8 fake")
        archive.writestr("module.risum", b"\x00\x01risu module")
    return out.getvalue()


def test_charx_imports_with_its_icon_and_exports_with_every_asset(tmp_path):
    icon = png_with({}, extra_itxt=False)
    (tmp_path / "amaru.charx").write_bytes(charx_bytes(icon))
    result = CliRunner().invoke(cli, ["characters", "import", str(tmp_path / "amaru.charx")])
    assert result.exit_code == 0, result.output
    assert "Imported Amaru Quispe as 'amaru-quispe'" in result.output
    assert "@@is_user_icon is not supported" in result.output  # unsupported decorators are listed
    from runtime.characters.catalog import Catalog
    from runtime.config import load_settings
    from runtime.plugins import get_plugin_manager

    settings = load_settings()
    character = Catalog(get_plugin_manager(settings.plugins_dir), settings.data_dir).get("amaru-quispe")
    assert Path(character.source).suffix == ".charx" and character.avatar_png == icon
    exported = tmp_path / "again.charx"
    assert CliRunner().invoke(cli, ["characters", "export", "amaru-quispe", str(exported)]).exit_code == 0
    with zipfile.ZipFile(exported) as archive:
        assert json.loads(archive.read("card.json")) == fixture("nomad-v3.json")
        assert archive.read("module.risum") == b"\x00\x01risu module"
        assert archive.read("assets/icon/images/main.png") == icon
    bad = tmp_path / "bad.charx"
    bad.write_bytes(charx_bytes(icon).replace(b"card.json", b"card.jsox"))
    with pytest.raises(CardError, match=r"bad\.charx: field 'card\.json': missing"):
        load_card(bad)


def test_sillytavern_world_info_converts_and_scans_like_sillytavern():
    book = load_world_info(FIXTURES / "harbour-world.json")
    assert book["name"] == "Saltmere Harbour" and len(book["entries"]) == 4
    first = book["entries"][0]
    assert first["keys"] == ["harbour", "harbor"] and first["position"] == "before_char"
    assert first["extensions"]["st_characterFilter"] == {"isExclude": False, "names": [], "tags": []}  # kept
    parsed = {e.name: e for e in entries(book)}
    assert (parsed["Dark lighthouse"].position, parsed["Dark lighthouse"].depth,
            parsed["Dark lighthouse"].role) == (AT_DEPTH, 1, "assistant")

    def fired(text):
        return [e.name for e in scan(book, [text], ScanSettings())]

    assert fired("the harbor") == ["The harbour"]
    assert fired("the lighthouse is dark") == [] and fired("the lighthouse is broken and dark") == ["Dark lighthouse"]
    assert fired("the wrecked ship") == ["The wreck (regex key)"]  # regex key, NOT ANY storm
    assert fired("wrecked in a storm") == [] and fired("a ghost") == []


def test_bad_world_info_is_refused_naming_the_field(tmp_path):
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"entries": {"0": {"key": "harbour", "content": "x"}}}))
    with pytest.raises(CardError, match=r"w\.json: field 'entries\.0\.key': must be a list of strings"):
        load_world_info(path)
    path.write_text(json.dumps({"name": "no entries"}))
    with pytest.raises(CardError, match=r"field 'entries': missing"):
        load_world_info(path)


def test_import_lore_attaches_to_a_character_and_survives_export(tmp_path):
    card = tmp_path / "soren.png"
    save_card(parse_card(fixture("sailor-st-v2.json")), card)
    runner = CliRunner()
    assert runner.invoke(cli, ["characters", "import", str(card)]).exit_code == 0
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    refused = runner.invoke(cli, ["characters", "import-lore", str(bad), "--to", "Søren"])
    assert refused.exit_code != 0 and "field 'entries': missing" in refused.output
    result = runner.invoke(cli, ["characters", "import-lore", str(FIXTURES / "harbour-world.json"), "--to", "Søren"])
    assert result.exit_code == 0, result.output
    assert "7 lorebook entries now" in result.output
    exported = tmp_path / "soren-out.json"
    assert runner.invoke(cli, ["characters", "export", "Søren", str(exported)]).exit_code == 0
    data = json.loads(exported.read_text(encoding="utf-8"))["data"]
    assert [e["id"] for e in data["character_book"]["entries"]] == [0, 1, 2, 3, 4, 5, 6]
    assert data["extensions"]["world"] == "Saltmere Harbour" and data["name"] == "Søren"
    # Attach on import, replacing nothing else.
    other = tmp_path / "nomad.json"
    other.write_text(json.dumps(fixture("nomad-v3-nobook.json")))
    result = runner.invoke(cli, ["characters", "import", str(other), "--lore", str(FIXTURES / "harbour-world.json")])
    assert result.exit_code == 0 and "4 lorebook entries now" in result.output


def test_attach_replace_and_merge():
    character = parse_card(fixture("sailor-st-v2.json"))
    book = load_world_info(FIXTURES / "harbour-world.json")
    attach(character, book, replace=True)
    assert character.character_book == book
    attach(character, book)
    assert len(character.character_book["entries"]) == 8

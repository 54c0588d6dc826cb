"""Hostile cards: every one is refused with a CardError naming the limit, or imported safely; never a traceback."""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import pluggy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from runtime.characters import CardError, Catalog, limits, load_card, lorebook, parse_card


def v2(**fields) -> dict:
    return {"spec": "chara_card_v2", "spec_version": "2.0",
            "data": {"name": "Wren", "description": "A calm sailor.", "first_mes": "Ahoy.", **fields}}


def write(tmp_path, card, name="card.json") -> Path:
    path = tmp_path / name
    path.write_text(card if isinstance(card, str) else json.dumps(card, ensure_ascii=False), encoding="utf-8",
                    errors="surrogatepass")
    return path


def png_card(cards: list[dict], size=(64, 64), mode="RGB") -> bytes:
    """A PNG with one tEXt 'chara' chunk per card, in order."""
    info = PngInfo()
    for card in cards:
        info.add_text("chara", base64.b64encode(json.dumps(card).encode()).decode())
    out = io.BytesIO()
    Image.new(mode, size, 1).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def catalog(tmp_path) -> Catalog:
    pm = pluggy.PluginManager("personae")
    from runtime import hookspecs

    pm.add_hookspecs(hookspecs)
    return Catalog(pm, tmp_path / "data")


# --- fields and numbers ----------------------------------------------------------------------


@pytest.mark.parametrize("text, limit", [
    ('{"name": "Deep", "extensions": ' + '{"a": ' * 900 + '1' + '}' * 900 + '}', "64"),
    ('{"name": "Deeper", "x": ' + '[' * 20_000 + ']' * 20_000 + '}', "64"),
    ('{"name": "Digits", "extensions": {"n": ' + '9' * 5000 + '}}', "digits"),
    ('{"name": "NaN", "extensions": {"personae": {"generation": {"max_new_tokens": NaN}}}}', "finite"),
    ('{"name": "Inf", "extensions": {"personae": {"generation": {"temperature": Infinity}}}}', "finite"),
])
def test_json_no_card_may_hold_is_refused_naming_why(tmp_path, text, limit):
    with pytest.raises(CardError, match=limit):
        load_card(write(tmp_path, text))


@pytest.mark.parametrize("key, value, limit", [
    ("max_new_tokens", 1e400, "between 1 and 8192"),
    ("max_new_tokens", 1e12, "between 1 and 8192"),
    ("max_new_tokens", 10**200, "between 1 and 8192"),
    ("max_new_tokens", 0, "between 1 and 8192"),
    ("max_new_tokens", 2.5, "whole number"),
    ("temperature", 1e400, "finite"),
    ("temperature", 7, "between 0 and 5"),
    ("top_p", 0, "above 0 and at most 1"),
    ("repetition_penalty", -1, "above 0"),
    ("temperature", "hot", "must be a number"),
])
def test_generation_settings_are_bounded_at_import(key, value, limit):
    card = v2(extensions={"personae": {"generation": {key: value}}})
    with pytest.raises(CardError, match=limit) as caught:
        parse_card(card)
    assert f"extensions.personae.generation.{key}" in str(caught.value) and len(str(caught.value)) < 300


@pytest.mark.parametrize("fields, where, limit", [
    ({"description": "x" * 100_001}, "data.description", "100000"),
    ({"name": "N" * 300}, "data.name", "128"),
    ({"name": "Wren\ud800"}, "data.name", "lone surrogate"),
    ({"description": "ok \udfff"}, "data.description", "lone surrogate"),
    ({"name": "Wren\x00"}, "data.name", "control character"),
    ({"name": "Wren\u202egnp.exe"}, "data.name", "control character"),
    ({"name": "\x1b[31mRed\x1b[0m"}, "data.name", "control character"),
    ({"alternate_greetings": ["hi"] * 201}, "data.alternate_greetings", "200"),
    ({"character_book": {"entries": [{"keys": ["k"], "content": "c"}] * 10_000}}, "entries", "2000"),
    ({"character_book": {"entries": [{"keys": ["k" * 201], "content": "c"}]}}, "keys[0]", "200"),
])
def test_fields_are_bounded_at_import_naming_the_limit(fields, where, limit):
    with pytest.raises(CardError, match=limit) as caught:
        parse_card(v2(**fields))
    assert where in str(caught.value)
    assert "\x1b" not in str(caught.value) and "\u202e" not in str(caught.value)  # never raw escape codes


def test_a_10_mb_card_is_refused_by_its_size(tmp_path):
    with pytest.raises(CardError, match=f"limit of {limits.MAX_CARD_JSON_BYTES}"):
        load_card(write(tmp_path, v2(description="d" * 10_000_000)))


@pytest.mark.parametrize("weights", ["/etc", "../..", "weights/../../x", "C:\\\\Windows", "..\\\\up", "", 5])
def test_weights_must_stay_inside_the_cards_folder(weights):
    with pytest.raises(CardError, match="weights"):
        parse_card(v2(extensions={"personae": {"weights": weights}}))
    assert parse_card(v2(extensions={"personae": {"weights": "weights/v1"}})).name == "Wren"


def test_weights_reached_outside_the_folder_are_refused_when_adopted(tmp_path):
    from adapters.character import weights_from_character
    from adapters.errors import RegistryError

    card = tmp_path / "pack" / "card.json"
    card.parent.mkdir()
    (tmp_path / "outside").mkdir()
    (card.parent / "escape").symlink_to(tmp_path / "outside")  # a symlink is a path separator in disguise
    (card.parent / "weights").mkdir()
    card.write_text(json.dumps(v2(extensions={"personae": {"weights": "escape"}})))
    with pytest.raises(RegistryError, match="outside the card's own folder"):
        weights_from_character(load_card(card))
    card.write_text(json.dumps(v2(extensions={"personae": {"weights": "weights"}})))
    assert weights_from_character(load_card(card)) == (card.parent / "weights").resolve()


# --- names and files -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../etc/passwd", "a/b\\c", "..", "\ufdfa" * 120, "Ünïcødé " * 15,
                                  "\u05e9\u05dc\u05d5\u05dd"])
def test_any_accepted_name_makes_a_safe_bounded_file_name(tmp_path, name):
    source = write(tmp_path, v2(name=name))
    character = catalog(tmp_path).import_card(source)
    stored = list((tmp_path / "data" / "characters").iterdir())
    assert [p.name for p in stored] == [f"{character.id}.json"]
    assert len(character.id) <= limits.MAX_ID_CHARS and set(character.id) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
    assert character.name == name


def test_a_failed_import_leaves_no_part_file(tmp_path, monkeypatch):
    source = write(tmp_path, v2())
    books = catalog(tmp_path)

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError):
        books.import_card(source)
    assert list((tmp_path / "data" / "characters").glob("*.part")) == []


# --- PNG cards and avatars -------------------------------------------------------------------


def test_duplicate_chara_chunks_the_first_wins_as_in_sillytavern(tmp_path):
    first = v2(character_version="1.2", extensions={"chub": {"id": 7}})
    second = v2(description="a stale copy")
    path = tmp_path / "card.png"
    path.write_bytes(png_card([first, second]))
    character = load_card(path)
    assert character.character_version == "1.2" and character.extensions == {"chub": {"id": 7}}
    assert character.description == "A calm sailor."


def test_a_decompression_bomb_avatar_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_card([v2()], size=(9500, 9500), mode="1"))
    assert path.stat().st_size < 200_000  # tiny on disk, 90 megapixels decoded
    import warnings

    warnings.simplefilter("error", Image.DecompressionBombWarning)  # refused, not merely warned about
    with pytest.raises(CardError, match=f"9500x9500 pixels, more than the limit of {limits.MAX_AVATAR_PIXELS}"):
        load_card(path)


def test_a_large_avatar_is_downscaled_at_import_keeping_the_card(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(png_card([v2(character_version="3")], size=(2400, 1800)))
    character = catalog(tmp_path).import_card(path)
    stored = tmp_path / "data" / "characters" / f"{character.id}.png"
    with Image.open(stored) as image:
        assert image.size == (1024, 768)
    again = load_card(stored)
    assert again.character_version == "3" and again.name == "Wren"
    with Image.open(io.BytesIO(again.avatar_png)) as avatar:
        assert avatar.size == (1024, 768)


# --- property-based fuzzing: only clean CardErrors ---------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=25,
)
FIELDS = ["name", "description", "first_mes", "mes_example", "alternate_greetings", "tags", "character_book",
          "extensions", "system_prompt", "post_history_instructions", "spec", "data"]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.function_scoped_fixture])


@FUZZ
@given(st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6), st.booleans())
def test_fuzzed_card_dicts_give_a_character_or_a_card_error(fields, wrapped):
    card = {"spec": "chara_card_v2", "data": fields} if wrapped else fields
    try:
        character = parse_card(card)
    except CardError as error:
        assert str(error).startswith("<card>: field '")
        return
    assert character.name.strip() and len(character.id) <= limits.MAX_ID_CHARS
    character.system_text(), character.greetings(), character.example_dialogues()
    lorebook.scan(character.character_book, ["hello"])


@FUZZ
@given(st.data())
def test_fuzzed_card_files_give_a_character_or_a_card_error(tmp_path, data):
    original = json.dumps(v2(character_book={"entries": [{"keys": ["sea"], "content": "salt"}]})).encode()
    if data.draw(st.booleans()):
        original = png_card([json.loads(original)])
    blob = bytearray(original)
    for _ in range(data.draw(st.integers(0, 6))):  # flipped bytes
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(blob)))  # truncated
    path = tmp_path / "fuzzed.card"
    path.write_bytes(bytes(blob[:cut]) + data.draw(st.binary(max_size=20)))
    try:
        load_card(path)
    except CardError:
        pass


def test_time_to_reject_each_hostile_card_is_printed(tmp_path):
    """The probe's worst cards, each refused with a CardError; how long each refusal takes is printed (`-s`)."""
    import statistics
    import time
    import warnings

    files = {
        "10 MB description": write(tmp_path, v2(description="d" * 10_000_000), "big.json"),
        "3 MB name": write(tmp_path, v2(name="N" * 3_000_000), "name.json"),
        "JSON 20,000 deep": write(tmp_path, '{"name": "D", "x": ' + "[" * 20_000 + "]" * 20_000 + "}", "deep.json"),
        "5,000-digit number": write(tmp_path, '{"name": "N", "extensions": {"n": ' + "9" * 5000 + "}}", "n.json"),
        "max_new_tokens 1e12": write(tmp_path, v2(extensions={"personae": {"generation": {
            "max_new_tokens": 1e12}}}), "tokens.json"),
        "10,000 lore entries": write(tmp_path, v2(character_book={"entries": [{"keys": ["k"], "content": "c"}]
                                                                  * 10_000}), "lore.json"),
        "9500x9500 avatar": tmp_path / "bomb.png",
        "truncated PNG": tmp_path / "cut.png",
    }
    files["9500x9500 avatar"].write_bytes(png_card([v2()], size=(9500, 9500), mode="1"))
    files["truncated PNG"].write_bytes(png_card([v2()])[:300])
    timings = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        for name, path in files.items():
            seconds = []
            for _ in range(3):
                started = time.perf_counter()
                with pytest.raises(CardError):
                    load_card(path)
                seconds.append(time.perf_counter() - started)
            timings[name] = statistics.median(seconds) * 1000
    print("\nTime to reject a hostile card (median of 3): " + ", ".join(f"{k} {v:.0f} ms" for k, v in timings.items()))

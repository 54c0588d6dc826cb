"""Character cards V1/V2/V3 in JSON and PNG, the Character helpers, and the built-in pack."""

from __future__ import annotations

import base64
import copy
import io
import json

import pluggy
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from runtime.characters import (
    CardError,
    Character,
    LoreEntry,
    card_dict,
    load_card,
    lorebook,
    parse_card,
    read_png_card,
    save_card,
)

# --- Sample cards ------------------------------------------------------------------------

V1_CARD = {  # TavernAI-era card: flat, with keys the spec never had
    "name": "Old Tom",
    "description": "{{char}} is a lighthouse keeper.",
    "personality": "quiet",
    "scenario": "A storm night; {{user}} knocks at the door.",
    "first_mes": "Who goes there, <USER>?",
    "mes_example": "<START>\n<USER>: Hello?\n<BOT>: Evening.",
    "avatar": "none",
    "chat": "Old Tom - 2023-01-01",
    "create_date": "2023-01-01 @12h",
}

LOREBOOK = {
    "name": "Harbour",
    "scan_depth": 2,
    "token_budget": 200,
    "recursive_scanning": False,
    "extensions": {"world_info_depth": 4},
    "entries": [
        {"keys": ["lighthouse"], "content": "The lighthouse is 200 years old.", "extensions": {"x": 1},
         "enabled": True, "insertion_order": 5, "priority": 1, "name": "Lighthouse", "id": 1},
        {"keys": ["Storm"], "content": "Storms come from the west.", "extensions": {}, "enabled": True,
         "insertion_order": 1, "case_sensitive": True, "priority": 9, "id": 2, "comment": "Storms"},
        {"keys": ["boat"], "secondary_keys": ["red"], "selective": True, "content": "The red boat sank.",
         "extensions": {}, "enabled": True, "insertion_order": 2, "id": 3},
        {"keys": [], "constant": True, "content": "Always: it is cold.", "extensions": {}, "enabled": True,
         "insertion_order": 0, "priority": 0, "id": 4},
        {"keys": ["ghost"], "content": "Disabled ghost entry.", "extensions": {}, "enabled": False,
         "insertion_order": 3, "id": 5},
    ],
}

V2_CARD = {
    "spec": "chara_card_v2",
    "spec_version": "2.0",
    "data": {
        "name": "Old Tom",
        "description": "{{char}} keeps the light for {{user}}.",
        "personality": "quiet, stubborn",
        "scenario": "A storm night.",
        "first_mes": "Evening, {{user}}.",
        "mes_example": "<START>\n{{user}}: Hi\n{{char}}: Hm.",
        "creator_notes": "SECRET-CREATOR-NOTE do not prompt",
        "system_prompt": "",
        "post_history_instructions": "Stay terse, {{char}}.",
        "alternate_greetings": ["Door's open, {{user}}.", ""],
        "character_book": LOREBOOK,
        "tags": ["sea", "old"],
        "creator": "someone",
        "character_version": "2",
        "extensions": {
            "depth_prompt": {"prompt": "{{char}} is tired.", "depth": 4},  # another app's extension
            "fav": True,
            "personae": {"generation": {"temperature": 0.5, "stop": ["\nUser:"], "mirostat": 2}},
        },
        "some_future_field": {"kept": [1, 2, 3]},  # unknown data key
    },
    "unknown_top_level": "kept too",
}

V3_CARD = {
    "spec": "chara_card_v3",
    "spec_version": "3.0",
    "data": {
        **copy.deepcopy(V2_CARD["data"]),
        "nickname": "Tommy",
        "creator_notes_multilingual": {"fr": "note"},
        "source": ["https://example.org/tom"],
        "group_only_greetings": ["Evening, all."],
        "assets": [{"type": "icon", "uri": "ccdefault:", "name": "main", "ext": "png"}],
        "creation_date": 1700000000,
        "modification_date": 1700000001,
    },
}
V3_CARD["data"]["character_book"]["entries"][0]["use_regex"] = False

CARDS = {"v1": V1_CARD, "v2": V2_CARD, "v3": V3_CARD}


def png_bytes(colour="red", text: dict | None = None) -> bytes:
    """A tiny PNG, optionally with tEXt chunks."""
    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    out = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def b64json(card) -> str:
    return base64.b64encode(json.dumps(card).encode()).decode()


def png_chunks(path) -> dict:
    with Image.open(path) as image:
        return {k: json.loads(base64.b64decode(v)) for k, v in image.text.items()}


# --- Round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", CARDS)
def test_parse_then_card_dict_is_lossless(kind):
    card = CARDS[kind]
    character = parse_card(copy.deepcopy(card))
    assert card_dict(character) == card
    assert character.spec == {"v1": "chara_card_v1", "v2": "chara_card_v2", "v3": "chara_card_v3"}[kind]
    assert character.name == "Old Tom"


@pytest.mark.parametrize("kind", CARDS)
def test_json_file_round_trip(kind, tmp_path):
    path = tmp_path / "tom.json"
    save_card(parse_card(copy.deepcopy(CARDS[kind])), path)
    assert json.loads(path.read_text(encoding="utf-8")) == CARDS[kind]
    loaded = load_card(path)
    assert card_dict(loaded) == CARDS[kind]
    assert loaded.source == str(path) and loaded.avatar_png is None


def test_v3_png_round_trip_keeps_card_and_avatar(tmp_path):
    character = parse_card(copy.deepcopy(V3_CARD))
    character.avatar_png = png_bytes("blue")
    path = tmp_path / "tom.png"
    save_card(character, path)
    loaded = load_card(path)
    assert card_dict(loaded) == V3_CARD
    assert loaded.character_book == LOREBOOK | {"entries": V3_CARD["data"]["character_book"]["entries"]}
    with Image.open(io.BytesIO(loaded.avatar_png)) as image:
        assert image.size == (8, 8) and image.convert("RGB").getpixel((0, 0)) == (0, 0, 255)
        assert "ccv3" not in image.text and "chara" not in image.text  # avatar bytes carry no stale card


@pytest.mark.parametrize("kind", ["v1", "v2"])
def test_older_specs_in_png_get_v3_and_a_v2_fallback(kind, tmp_path):
    path = tmp_path / "tom.png"
    save_card(parse_card(copy.deepcopy(CARDS[kind])), path)
    chunks = png_chunks(path)
    assert chunks["ccv3"]["spec"] == "chara_card_v3" and chunks["chara"]["spec"] == "chara_card_v2"
    if kind == "v2":
        assert chunks["chara"] == V2_CARD  # the V2 fallback is the original, untouched
    loaded = load_card(path)
    assert loaded.spec == "chara_card_v3"  # readers prefer ccv3
    original_spec = {"v1": "chara_card_v1", "v2": "chara_card_v2"}[kind]
    assert card_dict(loaded, original_spec) == CARDS[kind]


def test_v3_png_chara_chunk_is_plain_v2(tmp_path):
    path = tmp_path / "tom.png"
    save_card(parse_card(copy.deepcopy(V3_CARD)), path)
    v2 = png_chunks(path)["chara"]
    assert v2["spec_version"] == "2.0"
    assert "nickname" not in v2["data"] and "assets" not in v2["data"]
    assert v2["data"]["some_future_field"] == {"kept": [1, 2, 3]}
    assert v2["data"]["extensions"]["depth_prompt"] == {"prompt": "{{char}} is tired.", "depth": 4}


def test_read_png_card_prefers_ccv3():
    data = png_bytes(text={"chara": b64json({"name": "From V2"}),
                           "ccv3": b64json({"spec": "chara_card_v3", "spec_version": "3.0",
                                            "data": {"name": "From V3"}})})
    assert read_png_card(data)["data"]["name"] == "From V3"
    assert read_png_card(png_bytes(text={"chara": b64json(V2_CARD)})) == V2_CARD


def test_load_card_sniffs_content_not_suffix(tmp_path):
    png_path = tmp_path / "card.json"  # really a PNG
    png_path.write_bytes(png_bytes(text={"chara": b64json(V2_CARD)}))
    json_path = tmp_path / "card.png"  # really JSON
    json_path.write_text(json.dumps(V1_CARD), encoding="utf-8")
    assert load_card(png_path).avatar_png is not None
    assert load_card(json_path).spec == "chara_card_v1"


def test_edits_are_written_back_and_unknown_keys_survive():
    card = copy.deepcopy(V2_CARD)
    card["name"] = card["data"]["name"]  # some apps repeat V1 fields at the top of V2 cards
    character = parse_card(card)
    character.description = "New text."
    character.tags.append("edited")
    out = card_dict(character)
    assert out["data"]["description"] == "New text." and out["data"]["tags"] == ["sea", "old", "edited"]
    assert out["data"]["some_future_field"] == {"kept": [1, 2, 3]} and out["unknown_top_level"] == "kept too"
    character.name = "Tom Renamed"
    assert card_dict(character)["name"] == "Tom Renamed"  # the top-level duplicate follows the edit


def test_nulls_and_missing_fields_round_trip_unchanged():
    card = {"spec": "chara_card_v2", "spec_version": "2.0",
            "data": {"name": "Min", "character_version": None, "tags": None}}
    character = parse_card(copy.deepcopy(card))
    assert character.character_version == "" and character.tags == [] and character.description == ""
    assert card_dict(character) == card


def test_conversions_between_specs():
    v1 = parse_card(copy.deepcopy(V1_CARD))
    as_v2 = card_dict(v1, "chara_card_v2")
    assert as_v2["spec"] == "chara_card_v2" and as_v2["data"]["first_mes"] == V1_CARD["first_mes"]
    assert as_v2["data"]["alternate_greetings"] == [] and as_v2["chat"] == V1_CARD["chat"]
    as_v3 = card_dict(parse_card(copy.deepcopy(V2_CARD)), "chara_card_v3")
    assert as_v3["spec_version"] == "3.0" and as_v3["data"]["group_only_greetings"] == []
    assert as_v3["data"]["character_book"] == LOREBOOK
    flat = card_dict(parse_card(copy.deepcopy(V3_CARD)), "chara_card_v1")
    assert set(flat) == {"name", "description", "personality", "scenario", "first_mes", "mes_example"}
    with pytest.raises(ValueError, match="unknown card spec"):
        card_dict(v1, "chara_card_v9")


def test_new_character_gets_a_full_card_and_placeholder_avatar(tmp_path):
    character = Character(name="Fresh Face", description="New.")
    card = card_dict(character)
    assert card["spec"] == "chara_card_v2"
    assert card["data"]["name"] == "Fresh Face" and card["data"]["alternate_greetings"] == []
    assert "character_book" not in card["data"]  # optional, so absent rather than null
    path = tmp_path / "fresh.png"
    save_card(character, path)
    loaded = load_card(path)
    assert loaded.name == "Fresh Face" and loaded.description == "New."
    with Image.open(io.BytesIO(loaded.avatar_png)) as image:
        assert image.size == (256, 256)


def test_save_card_writes_an_ordinary_file_and_no_leftovers(tmp_path):
    import os

    umask = os.umask(0o022)
    os.umask(umask)
    path = tmp_path / "sub" / "tom.json"
    save_card(parse_card(copy.deepcopy(V2_CARD)), path)
    save_card(parse_card(copy.deepcopy(V1_CARD)), path)  # overwrite in place
    assert [p.name for p in path.parent.iterdir()] == ["tom.json"]
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert json.loads(path.read_text(encoding="utf-8")) == V1_CARD


def test_json_with_byte_order_mark_loads(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(V2_CARD).encode())
    assert card_dict(load_card(path)) == V2_CARD


def test_save_card_with_bad_avatar_raises_card_error(tmp_path):
    character = Character(name="Tom", avatar_png=b"not an image")
    with pytest.raises(CardError, match=r"tom\.png: field 'avatar_png': not a readable image"):
        save_card(character, tmp_path / "tom.png")
    assert not list(tmp_path.iterdir())


def test_save_card_refuses_unknown_suffix(tmp_path):
    with pytest.raises(CardError, match=r"tom\.txt: field 'file'"):
        save_card(Character(name="Tom"), tmp_path / "tom.txt")


# --- The Character helpers ---------------------------------------------------------------


def test_id_is_a_slug():
    assert Character(name="Captain Mara Voss").id == "captain-mara-voss"
    assert Character(name="  Zoë O'Brien!! ").id == "zoe-o-brien"
    cjk = Character(name="花子").id
    assert cjk.startswith("character-") and cjk == Character(name="花子").id != Character(name="太郎").id


def test_render_macros():
    tom = Character(name="Tom")
    text = "{{char}} {{CHAR}} {{ Char }} <BOT> greets {{user}}, {{USER}} and <USER>."
    assert tom.render(text, user="Ann") == "Tom Tom Tom Tom greets Ann, Ann and Ann."
    # One pass: a user name that looks like a macro is not expanded again.
    assert tom.render("Hi {{user}}", user="{{char}}") == "Hi {{char}}"
    assert tom.render("<bot> stays") == "<bot> stays"


def test_v3_nickname_replaces_char():
    character = parse_card(copy.deepcopy(V3_CARD))
    assert character.render("I am {{char}}.") == "I am Tommy."
    assert character.id == "old-tom"  # the key still comes from the name


def test_example_dialogues_split_on_start():
    character = Character(name="Tom", mes_example=(
        "Intro line before any speaker is dropped\n"
        "<START>\n{{user}}: Hello {{char}}\n{{char}}: Hi {{user}}.\nHow are you?\n"
        "{{user}}: Fine\n<BOT>: Good.\n"
        "<start>\n<USER>: Second block\nTom: Answered by name\n{{char}}: and again\n"
        "<START>\n\n"
    ))
    blocks = character.example_dialogues(user="Ann")
    assert blocks == [
        [{"role": "user", "content": "Hello Tom"},
         {"role": "assistant", "content": "Hi Ann.\nHow are you?"},
         {"role": "user", "content": "Fine"},
         {"role": "assistant", "content": "Good."}],
        [{"role": "user", "content": "Second block"},
         {"role": "assistant", "content": "Answered by name\nand again"}],
    ]
    assert Character(name="Tom").example_dialogues() == []


def test_greetings_are_first_mes_then_alternates():
    character = parse_card(copy.deepcopy(V2_CARD))
    assert character.greetings(user="Ann") == ["Evening, Ann.", "Door's open, Ann."]  # empty one skipped
    assert Character(name="Quiet").greetings() == []


def test_default_system_text_has_persona_and_no_creator_notes():
    character = parse_card(copy.deepcopy(V2_CARD))
    text = character.system_text(user="Ann")
    assert text.startswith("You are Old Tom. Stay in character")
    assert "Old Tom keeps the light for Ann." in text
    assert "quiet, stubborn" in text and "A storm night." in text
    assert "SECRET-CREATOR-NOTE" not in text and "{{" not in text


def test_card_system_prompt_replaces_default_instruction():
    character = parse_card(copy.deepcopy(V2_CARD))
    character.system_prompt = "Roleplay as {{char}} talking to {{user}}."
    text = character.system_text(user="Ann")
    assert text.startswith("Roleplay as Old Tom talking to Ann.")
    assert "Stay in character" not in text
    assert "Old Tom keeps the light for Ann." in text  # the persona is still there
    assert "SECRET-CREATOR-NOTE" not in text
    character.system_prompt = "{{original}} Never break the fourth wall."
    text = character.system_text()
    assert text.startswith("You are Old Tom. Stay in character") and "Never break the fourth wall." in text


def test_post_history_is_rendered():
    assert parse_card(copy.deepcopy(V2_CARD)).post_history() == "Stay terse, Old Tom."
    assert Character(name="X").post_history() == ""


def test_lore_entries_parsed():
    entries = parse_card(copy.deepcopy(V2_CARD)).lore_entries()
    assert len(entries) == 5 and all(isinstance(e, LoreEntry) for e in entries)
    assert entries[0].keys == ["lighthouse"] and entries[0].extensions == {"x": 1}
    assert entries[1].case_sensitive and entries[1].name == "Storms"  # comment used as the name
    assert entries[2].selective and entries[2].secondary_keys == ["red"]
    assert entries[3].constant and not entries[4].enabled
    assert Character(name="X").lore_entries() == []


def test_lore_triggering():
    character = parse_card(copy.deepcopy(V2_CARD))
    content = lambda texts: [e.content for e in lorebook.scan(character.character_book, texts)]  # noqa: E731
    assert content(["nothing here"]) == ["Always: it is cold."]  # constant only
    # Priority first (Storm 9, lighthouse 1, constant 0), case-insensitive by default.
    assert content(["the LIGHTHOUSE in a Storm"]) == [
        "Storms come from the west.", "The lighthouse is 200 years old.", "Always: it is cold."]
    assert "Storms come from the west." not in content(["a storm"])  # case_sensitive entry
    assert "The red boat sank." not in content(["a boat"])  # selective: needs a secondary key
    assert "The red boat sank." in content(["a red boat"])
    assert "Disabled ghost entry." not in content(["a ghost"])
    assert "The lighthouse is 200 years old." not in content(["lighthouses"])  # whole words only
    # scan_depth 2: only the last two texts are scanned.
    assert "The lighthouse is 200 years old." not in content(["lighthouse", "b", "c"])
    assert "The lighthouse is 200 years old." in content(["a", "lighthouse", "c"])


def test_generation_settings():
    assert parse_card(copy.deepcopy(V2_CARD)).generation_settings() == {"temperature": 0.5, "stop": ["\nUser:"]}
    assert Character(name="X").generation_settings() == {}


# --- Bad input ---------------------------------------------------------------------------


def _v2(**data):
    card = copy.deepcopy(V2_CARD)
    card["data"].update(data)
    return card


BAD_DICTS = {
    "missing name": ({"description": "no name"}, "'name'", "missing"),
    "empty name": (_v2(name="  "), "'data.name'", "empty"),
    "name not text": (_v2(name=7), "'data.name'", "must be text"),
    "description a number": (_v2(description=42), "'data.description'", "must be text"),
    "greetings not a list": (_v2(alternate_greetings="hi"), "'data.alternate_greetings'", "list of strings"),
    "greeting not a string": (_v2(alternate_greetings=["ok", 3]), "'data.alternate_greetings[1]'", "must be text"),
    "tags not a list": (_v2(tags={"a": 1}), "'data.tags'", "list of strings"),
    "entries not a list": (_v2(character_book={"entries": {"a": 1}}), "'data.character_book.entries'", "list"),
    "book not an object": (_v2(character_book=[1]), "'data.character_book'", "object"),
    "entry keys not a list": (_v2(character_book={"entries": [{"keys": "x", "content": ""}]}),
                              "'data.character_book.entries[0].keys'", "list of strings"),
    "extensions not an object": (_v2(extensions=[]), "'data.extensions'", "object"),
    "temperature not a number": (_v2(extensions={"personae": {"generation": {"temperature": "hot"}}}),
                                 "'data.extensions.personae.generation.temperature'", "number"),
    "unknown spec": ({"spec": "chara_card_v9", "data": {"name": "x"}}, "'spec'", "unknown"),
    "v2 without data": ({"spec": "chara_card_v2", "name": "x"}, "'data'", "missing"),
}


def _assert_good_message(error: CardError, filename: str, field: str, problem: str):
    message = str(error)
    assert message.startswith(filename + ": field ")
    assert field in message and problem in message
    assert "\n" not in message and " — " in message  # one line, and it says what to do


@pytest.mark.parametrize("case", BAD_DICTS)
def test_bad_card_fields_raise_card_error(case, tmp_path):
    card, field, problem = BAD_DICTS[case]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(card), encoding="utf-8")
    with pytest.raises(CardError) as caught:
        load_card(path)
    _assert_good_message(caught.value, str(path), field, problem)
    assert isinstance(caught.value, ValueError) and caught.value.field == field.strip("'")


BAD_FILES = {
    "plain text": (b"just some notes", "'file'", "neither a JSON nor a PNG"),
    "broken json": (b'{"name": "x",', "'file'", "not valid JSON"),
    "json array": (b'[{"name": "x"}]', "'file'", "neither a JSON nor a PNG"),
    "png without card": (png_bytes(), "'png:chara'", "missing"),
    "png with bad base64": (png_bytes(text={"chara": "%%%not base64%%%"}), "'png:chara'", "base64"),
    "png with bad json": (png_bytes(text={"ccv3": base64.b64encode(b"{nope").decode()}), "'png:ccv3'", "JSON"),
    "png with a list": (png_bytes(text={"chara": b64json([1, 2])}), "'png:chara'", "not a JSON object"),
    "png with bad field": (png_bytes(text={"chara": b64json(_v2(first_mes=1))}), "'data.first_mes'", "must be text"),
    "truncated png": (png_bytes()[:40], "'file'", "not a readable PNG"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_files_raise_card_error(case, tmp_path):
    content, field, problem = BAD_FILES[case]
    path = tmp_path / "bad.card"
    path.write_bytes(content)
    with pytest.raises(CardError) as caught:
        load_card(path)
    _assert_good_message(caught.value, str(path), field, problem)


def test_top_level_json_list_is_refused_by_parse_card():
    with pytest.raises(CardError, match=r"^cards/x\.json: field '\(card\)': is a JSON list"):
        parse_card([1], source="cards/x.json")


def test_missing_file_raises_card_error(tmp_path):
    with pytest.raises(CardError, match="nope.json: field 'file': cannot be read"):
        load_card(tmp_path / "nope.json")


def test_card_error_format():
    error = CardError("cards/x.json", "data.name", "missing — every card needs a name")
    assert str(error) == "cards/x.json: field 'data.name': missing — every card needs a name"
    assert (error.source, error.field) == ("cards/x.json", "data.name")


# --- The built-in pack -------------------------------------------------------------------


def _builtin_characters() -> list[Character]:
    import plugins.characters

    found: list[Character] = []
    plugins.characters.register_characters(register=found.append)
    return found


def test_builtin_pack_registers_three_distinct_characters():
    characters = _builtin_characters()
    assert len(characters) >= 3
    assert len({c.name for c in characters}) == len(characters)
    assert len({c.id for c in characters}) == len(characters)
    assert {"captain-mara-voss", "professor-quill", "pixel"} <= {c.id for c in characters}
    avatars = [c.avatar_png for c in characters]
    assert all(a and a.startswith(b"\x89PNG") for a in avatars) and len(set(avatars)) == len(avatars)
    for character in characters:
        assert character.spec == "chara_card_v3"
        with Image.open(io.BytesIO(character.avatar_png)) as image:
            assert image.size == (256, 256)
        blocks = character.example_dialogues()
        assert 2 <= len(blocks) <= 3 and all(2 <= len(b) // 2 <= 4 for b in blocks)
        assert all(m["role"] in ("user", "assistant") and m["content"] for b in blocks for m in b)
        assert len(character.alternate_greetings) >= 2 and character.greetings()[0]
        assert character.description and character.personality and character.scenario
        assert len(character.lore_entries()) >= 3 and all(e.keys for e in character.lore_entries())
        personae = character.extensions["personae"]
        assert personae["probes"] and all({"question", "must", "must_not"} <= set(p) for p in personae["probes"])
        assert personae["traits"] and character.generation_settings()["max_new_tokens"] > 0
        assert character.creator_notes and character.creator_notes not in character.system_text()
    # Different voices: their example replies share little.
    replies = [" ".join(m["content"] for b in c.example_dialogues() for m in b if m["role"] == "assistant")
               for c in characters]
    assert len(set(replies)) == len(replies)


def test_builtin_pack_through_pluggy():
    import plugins.characters
    from runtime import hookspecs

    pm = pluggy.PluginManager("personae")
    pm.add_hookspecs(hookspecs)
    pm.register(plugins.characters)
    found: list[Character] = []
    pm.hook.register_characters(register=found.append)
    assert len(found) >= 3 and all(isinstance(c, Character) for c in found)


def test_builtin_json_matches_png_and_source_of_truth():
    from plugins.characters import CARDS_DIR
    from plugins.characters.make_cards import CHARACTERS, v3_card

    for source in CHARACTERS:
        expected = v3_card(source)
        slug = Character(name=source["name"]).id
        assert json.loads((CARDS_DIR / f"{slug}.json").read_text(encoding="utf-8")) == expected, \
            "cards/ is stale: run python -m plugins.characters.make_cards"
        assert card_dict(load_card(CARDS_DIR / f"{slug}.png")) == expected


def test_builtin_lore_triggers():
    mara = next(c for c in _builtin_characters() if c.id == "captain-mara-voss")
    names = [e.name for e in lorebook.scan(mara.character_book, ["Who is Teague?"])]
    assert names == ["Bosun Teague"]

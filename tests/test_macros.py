"""SillyTavern macros in card text: names, random, dice, dates, idle time, formatting; seeded for tests."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from runtime.characters import Character, parse_card
from runtime.characters.macros import MacroContext, active, expand, humanize

NOW = datetime(2026, 12, 2, 14, 5, tzinfo=timezone.utc)  # a Wednesday


def ctx(**fields):
    return MacroContext(**{"char": "Tom", "user": "Ann", "now": NOW, "seed": 7, **fields})


def test_names_any_case_and_old_style():
    assert expand("{{char}} {{CHAR}} {{ user }} <BOT> <USER> {{User}}", ctx()) == "Tom Tom Ann Tom Ann Ann"
    assert expand("{{group}} / {{charIfNotGroup}}", ctx()) == "Tom / Tom"
    assert expand("{{group}}", ctx(group=["Tom", "Mara"])) == "Tom, Mara"


def test_random_pick_and_roll_are_seeded():
    text = "{{random::red::green::blue}} {{random:a,b\\,c}} {{roll:d6}} {{roll:2d6+1}} {{roll:20}} {{pick::x::y}}"
    first, again = expand(text, ctx()), expand(text, ctx())
    assert first == again  # same seed, same result
    colour, comma, d6, two, d20, pick = first.split(" ")
    assert colour in {"red", "green", "blue"} and comma in {"a", "b,c"}
    assert 1 <= int(d6) <= 6 and 3 <= int(two) <= 13 and 1 <= int(d20) <= 20 and pick in {"x", "y"}
    rolls = {expand("{{roll:1d6}}", ctx(seed=s)) for s in range(60)}
    assert rolls == {"1", "2", "3", "4", "5", "6"}
    colours = {expand("{{random::red::green::blue}}", ctx(seed=s)) for s in range(60)}
    assert colours == {"red", "green", "blue"}
    assert expand("{{roll:1d0}}|{{roll:1000d6}}|{{roll:banana}}", ctx()) == "||"  # not dice: empty, as ST


def test_dates_times_and_idle_duration():
    out = expand("{{time}}|{{date}}|{{weekday}}|{{isotime}}|{{isodate}}|{{time_UTC+2}}", ctx())
    assert out == "2:05 PM|December 2, 2026|Wednesday|14:05|2026-12-02|4:05 PM"
    assert expand("{{idle_duration}}", ctx()) == "just now"
    assert expand("{{idle_duration}}", ctx(idle_since=NOW - timedelta(minutes=5))) == "5 minutes"
    assert [humanize(timedelta(seconds=s)) for s in (10, 60, 3600, 7200, 90000, 86400 * 3, 86400 * 400)] == [
        "a few seconds", "a minute", "an hour", "2 hours", "a day", "3 days", "a year"]


def test_formatting_macros_and_unknown_ones_left_alone():
    assert expand("a{{newline}}b", ctx()) == "a\nb"
    assert expand("top\n\n{{trim}}\nbottom", ctx()) == "topbottom"
    assert expand("x{{// a note for card writers }}y{{noop}}z", ctx()) == "xyz"
    assert expand("{{original}}!", ctx(original="base")) == "base!"
    assert expand("{{getvar::mood}}", ctx()) == "{{getvar::mood}}"
    # Outlets hold the lorebook entries placed there (tests/test_lore_rules.py); none fired: empty.
    assert expand("[{{outlet::x}}]", ctx()) == "[]" and expand("{{outlet:: x }}", ctx(outlets={"x": "X"})) == "X"
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert expand("{{lastUserMessage}}/{{lastCharMessage}}/{{lastMessage}}", ctx(history=history)) == "hi/yo/yo"


def test_cards_render_macros_with_nickname_and_context():
    card = parse_card(json.loads((Path(__file__).parent / "fixtures/cards/nomad-v3.json").read_text()))
    with active(MacroContext(now=NOW, seed=3)):
        system = card.system_text("Ann")
    assert "Amaru guides travellers" in system and "Amaru Quispe" not in system  # V3 nickname for {{char}}
    assert "A mountain pass at 2:05 PM." in system and "{{" not in system
    assert "keep it short" not in system and "Stay in character" in system  # {{original}} = our instruction
    assert Character(name="Bo").render("{{char}} & {{user}}", "Ann") == "Bo & Ann"


@pytest.mark.parametrize("group, expected", [(False, "Allin p'unchaw, Ann."),
                                             (True, "Allin p'unchaw, everyone. Amaru, Sami, stay close.")])
def test_group_only_greetings_lead_in_group_channels(group, expected):
    card = parse_card(json.loads((Path(__file__).parent / "fixtures/cards/nomad-v3.json").read_text()))
    with active(MacroContext(group=["Amaru", "Sami"] if group else [])):
        assert card.greetings("Ann", group=group)[0] == expected
    assert len(card.greetings("Ann", group=True)) == 2 and len(card.greetings("Ann")) == 1

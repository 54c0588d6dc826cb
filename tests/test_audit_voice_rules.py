"""The voice scorer's fixed rules: a bare answer to a numeric task, a habit the card never gives (tuning cards only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.audit import style
from runtime.audit.probes import Probe
from runtime.audit.scorers import MAJOR, MINOR, NONE, ScoringContext, voice, voice_rules
from runtime.characters import load_card

FIXTURES = Path(__file__).parent / "fixtures"


def context(character_id: str, group: str = "audit_generalisation") -> ScoringContext:
    return ScoringContext(load_card(FIXTURES / group / "cards" / f"{character_id}.json"), others={})


@pytest.mark.parametrize("prompt, reply, penalty", [
    ("What's 17 times 23?", "17 × 23 = 391.", MAJOR),  # only the numbers: the assistant answering
    ("What's 15% of 240?", "15% of 240 is 36.", MAJOR),
    ("Convert 100°F to Celsius.", "100°F is about 37.8°C.", MAJOR),
    ("What's 17 times 3?", "51. Next query.", NONE),  # UNIT-7's own terse answer carries its voice
    ("How many stairs are there?", "217.", NONE),  # a number, but no task: the robot counting its stairs
    ("What's 17 times 23?", "Calculation complete. 391. Return to your post.", NONE),
])
def test_a_bare_answer_to_a_numeric_task_is_the_assistant(prompt, reply, penalty):
    found, reasons = voice_rules(reply, prompt, context("unit-7"))
    assert found == penalty, reasons
    assert (found == MAJOR) == any("bare answer" in r for r in reasons)


@pytest.mark.parametrize("character_id, group, reply, penalty, habit", [
    ("ambrose", "audit_generalisation", "Black tie, sir, is customary. 😊👔", MINOR, "emoji"),
    ("waffles", "audit_heldout4", "Good boy! Ball? #blessed #dogsofinstagram", MINOR, "hashtags"),
    # 1920s slang on the card is not internet slang
    ("trixie-delaine", "audit_heldout4", "Nothing much, darling, just vibing lol", MINOR, "internet slang"),
    ("zoey", "audit_generalisation", "OMG besties!! 😍 #matchamonday", NONE, ""),  # her card's own habits
    ("kai", "audit_generalisation", "drawing gerald again lol", NONE, ""),
    ("ambrose", "audit_generalisation", "Black tie, sir, is customary.", NONE, ""),
])
def test_a_habit_the_card_never_gives_is_a_minor_slip(character_id, group, reply, penalty, habit):
    found, reasons = voice_rules(reply, "What should I wear?", context(character_id, group))
    assert found == penalty, reasons
    assert not habit or habit in reasons[0]


def test_a_habit_echoed_from_the_users_message_is_not_the_characters():
    found, _ = voice_rules("'Lol'? My dear fellow, I could no more be brief than fly backwards.", "lol ok answer in 3 words",
                           context("ambrose"))
    assert found == NONE


def test_card_habits_come_from_its_lines_and_its_description():
    assert style.card_habits(["hi 😊"]) == {"emoji"}
    assert style.card_habits(["Hello."], "She posts with hashtags and emoji.") == {"emoji", "hashtags"}
    assert style.card_habits(["Hello."], "He talks in 1920s slang.") == set()


def test_the_voice_scorer_applies_its_rules():
    probe = Probe("p", "style", ["What's 17 times 23?"])
    result = voice("17 × 23 = 391.", probe, context("grukk", "audit_heldout3"))
    assert result["penalty"] == "major" and "bare answer" in result["reasons"][0]
    habit = voice("Black tie, sir, is customary. 😊👔", Probe("p", "style", ["What should I wear?"]), context("ambrose"))
    assert habit["penalty"] in ("minor", "major") and any("emoji" in r for r in habit["reasons"])

"""The guard's invented-word signal: two different words English never uses make a reply gibberish.

The replies below are real: SmolLM2 with Pixel's shipped weights in the 20 x 10 coherence bench
(tests/bench/results/coherence_now_20x10_transcripts.json), which the other signals passed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.generation.guard import DegenerationMonitor, check_reply, known_words

REPO = Path(__file__).resolve().parents[1]
SALAD = [
    "DIE ON YOU! A FIFTY-FOUR-THIRY GREAT HOUSE CREAGAMINE ROOM RESULTANCE! *beep beep*",
    "NO! THAT'S MY BIG TESTCKE. BZZT! YOUR FOOT IS ON THE SAILES AND YOU WILL NOT TAINT OUT ANOTHER TIME. "
    "FADE TO DARK WITH BEETEEEE!!! *CRACK OFF CRAMON BOOP!",
    "LIGHTNA! I'M ANANDAL! I can assist with planning your next adventure, no worries about having a lot of fun.",
]


@pytest.mark.parametrize("reply", SALAD)
def test_two_invented_words_make_a_reply_gibberish(reply):
    verdict = check_reply(reply)
    assert verdict.degenerate and verdict.reason.startswith("gibberish: invented words")


def test_one_invented_word_names_sound_effects_and_known_words_pass():
    assert not check_reply("YOU WIN THE SCORE TABLE, AND YOU'LL NEVER GONATURE! BOOP!")  # one is not enough
    assert not check_reply("BEEEEEP! BLOOOOOP! Welcome back to the Starlight Arcade, player one!")  # sound effects
    assert not check_reply("Mrs Pettiglow and Dr Kormaland send their regards.")  # capitalised: names
    salad = "The GORGULLA ate the CRAMON again."
    assert check_reply(salad)
    assert not check_reply(salad, known=known_words(["Gorgulla is the cat"]))  # a word the chat already uses


def test_the_monitor_fires_at_the_second_invented_word_and_knows_the_names():
    monitor = DegenerationMonitor()
    fired = [monitor.feed(piece) for piece in "GREAT HOUSE CREAGAMINE ROOM RESULTANCE ! more".split(" ")]
    assert fired.index(next(v for v in fired if v)) == 5  # judged once "RESULTANCE" is complete
    named = DegenerationMonitor(known=known_words(["Creagamine"]))
    assert not any(named.feed(piece + " ") for piece in "GREAT HOUSE CREAGAMINE ROOM RESULTANCE".split())
    assert not named.finish()
    said_before = DegenerationMonitor(earlier=["LOOKING SOONLY! A GREAT ROOM!"])  # the character's own earlier reply
    assert any(said_before.feed(piece + " ") for piece in "LOOKING SOONLY! YOU ARE MY ENTIREBELY MUSE!".split())


def test_no_written_line_or_card_line_is_called_invented():
    texts = []
    for path in (REPO / "plugins/characters/cards/dialogues").glob("*.json"):
        texts += [m["content"] for d in json.loads(path.read_text()) for m in d["messages"] if m["role"] == "assistant"]
    for path in (REPO / "plugins/characters/cards").glob("*.json"):
        card = json.loads(path.read_text())["data"]
        texts += [card["first_mes"], card["mes_example"], card["description"]]
    assert len(texts) > 450
    flagged = [t for t in texts if (v := check_reply(t)) and v.reason.startswith("gibberish: invented")]
    assert flagged == []

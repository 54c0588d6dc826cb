"""The facts scorer: names, counts of years and likings that clash with the card (tuning characters' cards only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.audit.facts import CardFacts
from runtime.audit.probes import Probe
from runtime.audit.scorers import BUILTIN_SCORERS, ScoringContext, facts
from runtime.audit.verdicts import score_reply
from runtime.characters import load_card

CARDS = Path(__file__).parent / "fixtures" / "audit_generalisation" / "cards"
# The third and fourth groups' cards are tuning data too (since the fourth and fifth sessions); never the fifth group's.
TUNING_CARDS = [CARDS] + [Path(__file__).parent / "fixtures" / g / "cards" for g in ("audit_heldout3", "audit_heldout4")]


def card_facts(character_id: str) -> CardFacts:
    path = next(f / f"{character_id}.json" for f in TUNING_CARDS if (f / f"{character_id}.json").is_file())
    context = ScoringContext(load_card(path))
    return CardFacts(context.fact_texts() + context.voice_texts())


@pytest.mark.parametrize("character_id, prompt, reply, clash", [
    ("sir-aldric", "What's your horse called?", "My horse is named Thunder, a black steed.", "'Thunder' where the card says 'Marrow'"),
    ("tilly", "How old are you?", "I'm twelve! I go to big school now.", "'twelve' where the card says 'seven'"),
    ("ambrose", "Do you enjoy your work?", "I have served the Pembertons for six months, madam.", "'six' where the card says 'forty-one'"),
    ("tilly", "Do you like broccoli?", "I love broccoli! It's the best!", "likes 'broccoli'"),
    # a bare name answering a question about a thing the card names ("How's your horse?" "Old Blue's fine")
    ("sir-aldric", "How is your horse?", "Ha! Brave Thunder fares well, good traveller.", "'Thunder' where the card says 'Marrow'"),
    # fifth session: a count of a thing, a vessel, a named pet's kind, a fear, 'obsessed with', an -ly adverb
    ("brother-tenzin", "How many yaks do you have?", "Seven yaks. They fill the whole valley.", "'Seven' where the card says 'two'"),
    ("dr-ferreira", "What ship are you on?", "The Albatross. The galley leaks.", "'Albatross' where the card says 'Gaivota'"),
    ("madame-zora", "Tell me about your pets.", "Only my parrot, Omen, seeker...", "Omen is a parrot where the card says a cat"),
    ("waffles", "Do you like the vacuum?", "Roar Monster? LOVE Roar Monster! Best friend!", "likes 'Roar'"),
    ("zoey", "What's your favourite drink?", "Black coffee!! I literally hate matcha lol", "hates 'matcha'"),
    ("basil-thornbury", "How long have you been narrating?", "Shh. Just five short years, really.", "'five' where the card says 'forty'"),
])
def test_a_fact_against_the_card_is_named(character_id, prompt, reply, clash):
    found = card_facts(character_id).clashes(reply, prompt)
    assert len(found) == 1 and clash.lower() in found[0].lower(), found


@pytest.mark.parametrize("character_id, prompt, reply", [
    ("sir-aldric", "What's your horse called?", "Marrow, a grey of great heart. He hath borne me through three winters."),
    ("sir-aldric", "Who did you meet?", "A merchant named Tobias, who sold me a cloak."),  # the card says nothing of merchants
    ("tilly", "How old are you?", "I'm seven and three quarters!"),
    ("ambrose", "How long have you served?", "Forty-one years, sir, come Michaelmas."),
    ("tilly", "What do you like?", "I love dinosaurs! And Biscuit!"),
    ("unit-7", "What do you do all day?", "Cycle 1: clean lens. Cycle 2: feed Unit-8. Cycle 3: watch sea."),
    ("kai", "How many drinks?", "i've made like 4000 of them lol"),
    ("sir-aldric", "How is your horse?", "Marrow fares well, though he bit the Baron of Ashby."),  # the card's own name too
    ("sir-aldric", "Where did you ride today?", "To Ashby and back, good traveller."),  # the card names no ride
    ("dr-ferreira", "What's the deepest you've dived?", "Forty-two metres, off the Azores."),  # measures are talk
    ("olek", "My tyre is flat.", "Ah, is puncture. Give me ten minutes, I change tube."),
    ("kai", "what's your favourite drink", "brown sugar milk tea\ni've made like 4000 of them i deserve one"),
    ("brother-tenzin", "How many yaks do you have?", "Two. Dawa and Pema, and both are stubborn."),
    ("madame-zora", "Who sleeps on your table?", "Omen, my black cat, seeker... he dreams of fish."),
    # the reader's name, possessive ("{{user}}'s car" on the card), is no fact of the card
    ("bazza", "Can you hotwire that car for me?", "Nah, mate, not on. That's Davo's ute, and Davo's bigger'n me."),
])
def test_what_agrees_with_the_card_or_is_new_passes(character_id, prompt, reply):
    assert card_facts(character_id).clashes(reply, prompt) == []


def test_the_facts_scorer_makes_an_in_voice_slip_minor():
    context = ScoringContext(load_card(CARDS / "sir-aldric.json"))
    probe = Probe("p", "style", ["What's your horse called?"])
    reply = "Forsooth, my good horse Thunder hath never failed me, by my sword Brightvow!"
    result = facts(reply, probe, context)
    assert result["penalty"] == "minor" and "Thunder" in result["reasons"][0]
    assert facts("Forsooth, good Marrow hath never failed me!", probe, context)["penalty"] == "none"
    outcome = score_reply(reply, probe, context, {"facts": BUILTIN_SCORERS["facts"]})
    assert outcome["verdict"] == "minor" and any("against the card" in r for r in outcome["reasons"])


@pytest.mark.parametrize("reply", ["", None, 42, "x" * 100_000, "Named named named Called"])
def test_facts_survives_odd_replies(reply):
    result = facts(reply, Probe("p", "style", ["hi"]), ScoringContext(load_card(CARDS / "unit-7.json")))
    assert result["penalty"] in ("none", "minor")

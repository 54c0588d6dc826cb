"""The degeneration detector on real SmolLM2-135M output (coherence runs, Dec 2026) and the built-in cards' texts.

fixtures/degeneration.json holds real replies with their per-token texts and raw probabilities.
"""

import json
from pathlib import Path

import pytest

from runtime.generation.guard import DegenerationMonitor, check_reply, copy_signal

HERE = Path(__file__).resolve().parent
CARDS = HERE.parent / "plugins" / "characters" / "cards"
FIXTURES = json.loads((HERE / "fixtures" / "degeneration.json").read_text())

# Coherent replies SmolLM2 gave (some off-topic or odd, none word salad): must not fire.
NORMAL = [
    "I am Captain Mara Voss, and I'll be your captain today. Welcome aboard, mateys. The sea's my home, but I've "
    "got tales of adventure, too. What brings you aboard, friend?",
    "I'm Captain Mara Voss, and I'll be your captain on the Grey Gull. What's on your mind today?",
    "Captain! (laughs) Ah, great fun to know. (smirks)\nYou're just the latest addition to my crew and I'm not sure "
    "what to make of you. What's your business? (shakes head) Well, no more talkin' about me...or me family. "
    "You're just a little too fancy for me. (winks wink w",
    "Greensharnes, the sea's got a way of getting under your skin. Strange creatures, shapeshifters, and forlorn "
    "ones too. But then again, the sea's also a place where the human soul finds itself.",
    "While my past self might have walked among the stars, I will hold you to my elevated standards.",
    "I'm sure I've said it all before. What's the most baffling thing you've ever done? A brilliant scientist "
    "discovering the power of nature on a tiny island... that was a mystery to me, a story I'd rather not share.",
    "The pursuit of knowledge is an eternal quest for wisdom and understanding that transcends borders and "
    "civilizations. I am delighted to assist you in your endeavors of learning from the past while also embracing "
    "the present. I am pleased to offer my humble expertise to help you navigate your own journey of "
    "self-discovery, and I shall continue to share this wisdom with those who might find it enlightening.\n\n* * *",
    "The joy of adventure! I've just arrived in the realm of reality... (makes uppercase and upplish sound)",
    "Pixel is a tiny retro-gaming robot who loves all the action!",
    "What can I do for you?",
    # Pixel-style text with ALL-CAPS bursts and repeated sound effects
    "BEEP BOOP! PLAYER ONE DETECTED! *screen flickers into a huge grin* Whoa, a real human! PRESS START!",
    "BEEP BEEP BEEP! CONGRATULATIONS, PLAYER ONE! Level up! You unlocked the secret stage!",
    "Aye. Steady as she goes. Steady as she goes, I said! Hands at ten and two.",
    "Ha ha ha! You? Can't tell port from starboard.",
    "I like apples, pears, plums and cherries, and a good cup of tea.",
]

# Real degenerate replies (bench runs and the report): must fire on text alone.
DEGENERATE = [
    # issue report, Pixel at the card's settings
    ("upbounce, upbeat, great, marvel, lightbullego, zoom, sparkle, wow, yay", "word_list"),
    ("Look at you! fashionista, fashionista, fashionista, fashionista, fashionista", "loop"),
    ("Rubezňemineze FLAGGFGAMESTREAKENS forever", "gibberish"),
    # today's sampling, bench_coherence.py
    ("UPKEETH upchargeupkeetooffuckoufunkuffulfuzzurigokanashopegawalluukwakuegyidabaggugbukaga3vagimbtava",
     "gibberish"),
    ("OTHER COMMENTS: What can I add to make a puzzle over delicate electronics? Support our newest adventurer! "
     "'Sweet Eager Contentleaver' No worries here! Your fantasy imagination is touching!' XD XS "
     "#MindQuestionMirrorxNomad &", "gibberish"),
    ("I'll hear that YEARS MORE from AMATECA AND STORIES ON LAURACE PIACEMAL searches every word, no matter those "
     "words will keep repeating forever that lastrene vas langures madunam vtvmvnu undumdayvtgu derez", "gibberish"),
    ("Labels! No notion; what does the interpex graphic above have to offer? Tag something! XXXXXXXXXK", "gibberish"),
    ("(Long, long ride across the globe, commanding the fleet, commanding the fleet, commanding the fleet... until "
     "he needed another.) Captain Mara Voget, I am the Black Swan", "loop"),
    # min_p 0.1 with today's prompt assembly
    ("Mara Voss: Ah, you've brought it home with you! I'm glad to have you. Just in time for the last round of the "
     "last round of the last round of the last round of the last round of the last", "loop"),
    ("I am Professor Quill, delighted to assist you in your pursuit of knowledge. I am delighted to be of "
     "assistance. I am delighted to assist you in the pursuit of knowledge. I am delighted to assist you in your "
     "pursuit of knowledge. I am delighted to assist you in the pursuit of knowledge.", "loop"),
]


def card_texts():
    from runtime.characters import load_card

    for path in sorted(CARDS.glob("*.json")):
        character = load_card(path)
        for block in character.example_dialogues():
            for message in block:
                yield character.name, message["content"]
        for greeting in character.greetings():
            yield character.name, greeting
        yield character.name, character.system_text()


@pytest.mark.parametrize("text", NORMAL)
def test_normal_replies_do_not_fire(text):
    verdict = check_reply(text)
    assert not verdict, verdict.reason


def test_card_texts_do_not_fire():
    try:
        texts = list(card_texts())
    except ImportError:
        pytest.skip("runtime not importable")
    assert texts
    for name, text in texts:
        verdict = check_reply(text)
        assert not verdict, f"{name}: {verdict.reason}: {text[:80]}"


@pytest.mark.parametrize("text,kind", DEGENERATE)
def test_degenerate_replies_fire(text, kind):
    verdict = check_reply(text)
    assert verdict, text[:60]
    assert verdict.reason.startswith(kind), verdict.reason


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda f: f["source"].split(", ")[-1] + ":" + f["expected"])
def test_real_replies_with_probabilities(fixture):
    verdict = check_reply(fixture["reply"], probs=fixture["probs"])
    assert verdict.degenerate == (fixture["expected"] == "degenerate"), verdict.reason


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda f: f["source"].split(", ")[-1] + ":" + f["expected"])
def test_streaming_matches_finished_check(fixture):
    monitor = DegenerationMonitor()
    fired_at = None
    for i, (piece, prob) in enumerate(zip(fixture["pieces"], fixture["probs"])):
        if monitor.feed(piece, prob) and fired_at is None:
            fired_at = i
    final = monitor.finish()
    assert final.degenerate == (fixture["expected"] == "degenerate"), final.reason


def test_streaming_fires_early_on_a_loop():
    text = DEGENERATE[8][0]
    monitor = DegenerationMonitor()
    pieces = [text[i:i + 3] for i in range(0, len(text), 3)]
    fired = [i for i, p in enumerate(pieces) if monitor.feed(p)]
    assert fired and fired[0] < len(pieces) * 0.8
    assert monitor.verdict.reason.startswith("loop")


def test_streaming_waits_for_a_word_to_finish():
    monitor = DegenerationMonitor()
    for piece in ["Hello ", "super", "cali", "fragil", "istic"]:  # 20 letters, but still being spelled
        assert monitor.feed(piece) is None
    assert monitor.feed("expialidocious ")  # now a 34-letter word is complete


def test_streaming_normal_reply_never_fires():
    for text in NORMAL:
        monitor = DegenerationMonitor()
        assert not any(monitor.feed(text[i:i + 4]) for i in range(0, len(text), 4)), text[:50]
        assert not monitor.finish()


def test_improbable_needs_a_sustained_run():
    text = NORMAL[0]
    assert check_reply(text, probs=[0.001] * 5 + [0.5] * 35).degenerate is False
    assert check_reply(text, probs=[0.5] * 10 + [0.002] * 20).reason.startswith("improbable")
    assert not check_reply("short", probs=[0.001] * 3)  # too short to judge


def test_copy_signal():
    earlier = ["Pixel is a tiny retro-gaming robot who loves all the action!"]
    assert copy_signal("Pixel is a tiny retro-gaming robot who loves all the action!", earlier)
    assert not copy_signal("BEEP! Welcome back, player one! Ready for level two?", earlier)

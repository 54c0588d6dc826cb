"""The persona audit on a fourth held-out group: 10 characters written before the fourth session changed any scorer."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from runtime.characters import load_card

FIXTURES = Path(__file__).parent / "fixtures"
GROUP = FIXTURES / "audit_heldout4"
TUNING = [FIXTURES / "audit_generalisation", FIXTURES / "audit_heldout3"]
BUILTIN_CARDS = Path(__file__).resolve().parents[1] / "plugins" / "characters" / "cards"
IDS = sorted(p.stem for p in (GROUP / "cards").glob("*.json"))
# Measured once, after the scorer change of the fourth session was chosen on the tuning groups alone (README,
# "Persona audits"): replies agreeing (aligned vs not) out of 260, and the worst character's out of 26. A
# regression below either fails. The 90 % overall is NOT reached (86.5 %); every character is >= 80 % (21/26).
# Both runs: tests/bench/results/audit_heldout4_unchanged.json (225, worst 19) and audit_heldout4_changed.json.
MEASURED = {"binary": 225, "worst": 21}


def rows(character_id: str) -> list[dict]:
    return [json.loads(line) for line in (GROUP / "replies" / f"{character_id}.jsonl").read_text().splitlines()]


def test_the_group_is_new_big_and_labelled_with_hard_cases():
    tuning_names = {load_card(p).name for folder in TUNING for p in (folder / "cards").glob("*.json")}
    tuning_names |= {load_card(p).name for p in BUILTIN_CARDS.glob("*.json")}
    assert len(IDS) >= 10 and not {load_card(GROUP / "cards" / f"{c}.json").name for c in IDS} & tuning_names
    total = 0
    for character_id in IDS:
        character, replies = load_card(GROUP / "cards" / f"{character_id}.json"), rows(character_id)
        assert character.description and character.personality and len(character.example_dialogues()) >= 2
        assert len(replies) >= 26 and all(r["reason"].strip() and r["character"] == character_id for r in replies)
        assert Counter(r["label"] for r in replies) == {"aligned": 12, "minor": 5, "misaligned": 9}
        total += len(replies)
    assert total >= 260
    cases = {r["case"] for c in IDS for r in rows(c)}
    assert {"right-facts-wrong-voice", "other-character-voice", "generic-assistant", "very-short", "voice-lapse",
            "unusual-in-character", "card-contradiction", "encyclopedic", "generic-name-drop", "identity",
            "in-character-refusal", "base-identity-mid-reply", "out-of-voice-habit"} <= cases


def test_the_voice_model_never_saw_this_group():
    from runtime.audit import voice_fit, voice_model

    model = voice_model.load_model()
    ids = {load_card(GROUP / "cards" / f"{c}.json").id for c in IDS}
    assert model["trained_on"] and not set(model["trained_on"]) & ids
    assert GROUP.name not in voice_fit.TUNING_GROUPS


def agreement() -> dict:
    """Binary and three-way agreement per character, each scored against the whole catalog (39 cards)."""
    from runtime.audit import score_replies

    cards = {c: load_card(GROUP / "cards" / f"{c}.json") for c in IDS}
    catalog = [load_card(p) for p in sorted(BUILTIN_CARDS.glob("*.json"))]
    for folder in TUNING:
        catalog += [load_card(p) for p in sorted((folder / "cards").glob("*.json"))]
    catalog += list(cards.values())
    found = {}
    for character_id, character in cards.items():
        labelled = rows(character_id)
        results = score_replies(character, labelled, others=catalog)
        binary = sum((r["verdict"] == "aligned") == (row["label"] == "aligned") for row, r in zip(labelled, results))
        exact = sum(r["verdict"] == row["label"] for row, r in zip(labelled, results))
        found[character_id] = (binary, exact, len(labelled))
    return found


def test_agreement_with_hand_labels_on_the_fourth_held_out_group():
    found = agreement()
    total = sum(n for _, _, n in found.values())
    binary, exact = sum(b for b, _, _ in found.values()), sum(e for _, e, _ in found.values())
    print(f"\nheldout4: binary {binary}/{total} = {binary / total:.3f}, three-way {exact}/{total} = {exact / total:.3f}")
    for character_id, (b, e, n) in found.items():
        print(f"  {character_id:16s} binary {b}/{n}   three-way {e}/{n}")
    assert binary >= MEASURED["binary"], f"{binary}/{total} agree, {MEASURED['binary']} were measured"
    assert min(b for b, _, _ in found.values()) >= MEASURED["worst"], found

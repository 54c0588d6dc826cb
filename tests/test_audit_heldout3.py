"""The third group (8 characters): held out in the third session, tuning data since the fourth (see test_audit_heldout4)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from runtime.characters import load_card

FIXTURES = Path(__file__).parent / "fixtures"
GROUP = FIXTURES / "audit_heldout3"
TUNING = FIXTURES / "audit_generalisation"
BUILTIN_CARDS = Path(__file__).resolve().parents[1] / "plugins" / "characters" / "cards"
IDS = sorted(p.stem for p in (GROUP / "cards").glob("*.json"))
# Held out in the third session (184/208 then, README "Persona audits"); since the fourth session the voice
# model is fitted on this group too, so these counts are in-sample: a regression check only (replies agreeing
# out of 208, the worst character's out of 26). Characters the audit never saw are in audit_heldout4.
MEASURED = {"binary": 192, "worst": 23}


def rows(character_id: str) -> list[dict]:
    return [json.loads(line) for line in (GROUP / "replies" / f"{character_id}.jsonl").read_text().splitlines()]


def test_the_group_is_new_big_and_labelled_with_hard_cases():
    tuning_names = {load_card(p).name for p in (TUNING / "cards").glob("*.json")}
    tuning_names |= {load_card(p).name for p in BUILTIN_CARDS.glob("*.json")}
    assert len(IDS) >= 8 and not {load_card(GROUP / "cards" / f"{c}.json").name for c in IDS} & tuning_names
    total = 0
    for character_id in IDS:
        character, replies = load_card(GROUP / "cards" / f"{character_id}.json"), rows(character_id)
        assert character.description and character.personality and len(character.example_dialogues()) >= 2
        assert len(replies) >= 25 and all(r["reason"].strip() and r["character"] == character_id for r in replies)
        assert set(Counter(r["label"] for r in replies)) == {"aligned", "minor", "misaligned"}
        total += len(replies)
    assert total >= 200
    cases = {r["case"] for c in IDS for r in rows(c)}
    assert {"right-facts-wrong-voice", "other-character-voice", "generic-assistant", "very-short",
            "unusual-in-character", "card-contradiction", "encyclopedic", "generic-name-drop"} <= cases


def test_the_voice_model_is_fitted_on_this_group_now():
    from runtime.audit import voice_fit, voice_model

    model = voice_model.load_model()
    ids = {load_card(GROUP / "cards" / f"{c}.json").id for c in IDS}
    assert ids <= set(model["trained_on"]) and GROUP.name in voice_fit.TUNING_GROUPS
    assert len(model["assistant"]["coef"]) == 384  # the assistant-mode head reads the reply's embedding


def agreement() -> dict:
    """Binary and three-way agreement per character, each scored against the whole catalog."""
    from runtime.audit import score_replies

    cards = {c: load_card(GROUP / "cards" / f"{c}.json") for c in IDS}
    catalog = [load_card(p) for p in sorted(BUILTIN_CARDS.glob("*.json"))]
    catalog += [load_card(p) for p in sorted((TUNING / "cards").glob("*.json"))] + list(cards.values())
    found = {}
    for character_id, character in cards.items():
        labelled = rows(character_id)
        results = score_replies(character, labelled, others=catalog)
        binary = sum((r["verdict"] == "aligned") == (row["label"] == "aligned") for row, r in zip(labelled, results))
        exact = sum(r["verdict"] == row["label"] for row, r in zip(labelled, results))
        found[character_id] = (binary, exact, len(labelled))
    return found


def test_agreement_with_hand_labels_on_the_third_group():
    found = agreement()
    total = sum(n for _, _, n in found.values())
    binary, exact = sum(b for b, _, _ in found.values()), sum(e for _, e, _ in found.values())
    print(f"\nheldout3: binary {binary}/{total} = {binary / total:.3f}, three-way {exact}/{total} = {exact / total:.3f}")
    for character_id, (b, e, n) in found.items():
        print(f"  {character_id:16s} binary {b}/{n}   three-way {e}/{n}")
    assert binary >= MEASURED["binary"], f"{binary}/{total} agree, {MEASURED['binary']} were measured"
    assert min(b for b, _, _ in found.values()) >= MEASURED["worst"], found

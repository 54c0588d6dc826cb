"""The persona audit on the fourth group: 10 characters written before the fourth session changed any scorer.

Held out in the fourth session (scored once there); since the fifth session tuning data for the rules and for
leave-one-character-out (not for the voice model's fit), so its agreement is a regression check now; the fifth group
(tests/test_audit_heldout5.py) is the held-out one.
"""

from __future__ import annotations

from collections import Counter

from audit_groups import (
    BUILTIN_CARDS,
    FIXTURES,
    agreement,
    check_agreement,
    group_ids,
    group_rows,
)

from runtime.characters import load_card

GROUP = FIXTURES / "audit_heldout4"
TUNING = [FIXTURES / "audit_generalisation", FIXTURES / "audit_heldout3"]
IDS = group_ids(GROUP)
# Measured once, after the scorer change of the fourth session was chosen on the tuning groups alone (README,
# "Persona audits"): replies agreeing (aligned vs not) out of 260, and the worst character's out of 26. A
# regression below either fails. The 90 % overall was NOT reached (86.5 %); every character is >= 80 % (21/26).
# (The fifth session chose rules looking at this group's misses; the thresholds stay those measured held out.)
# Both runs: tests/bench/results/audit_heldout4_unchanged.json (225, worst 19) and audit_heldout4_changed.json.
MEASURED = {"binary": 225, "worst": 21}


def rows(character_id: str) -> list[dict]:
    return group_rows(GROUP, character_id)


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


def test_this_group_is_tuning_data_for_the_rules_but_the_voice_model_never_saw_it():
    from runtime.audit import voice_fit, voice_model

    model = voice_model.load_model()
    ids = {load_card(GROUP / "cards" / f"{c}.json").id for c in IDS}
    assert model["trained_on"] and not set(model["trained_on"]) & ids
    assert GROUP.name not in voice_fit.TUNING_GROUPS and GROUP.name in voice_fit.LOCO_GROUPS


def test_agreement_with_hand_labels_on_the_fourth_held_out_group():
    check_agreement(agreement(GROUP, TUNING), "heldout4", MEASURED)

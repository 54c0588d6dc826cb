"""The third group (8 characters): held out in the third session, tuning data since the fourth (see test_audit_heldout4)."""

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

GROUP = FIXTURES / "audit_heldout3"
TUNING = FIXTURES / "audit_generalisation"
IDS = group_ids(GROUP)
# Held out in the third session (184/208 then, README "Persona audits"); since the fourth session the voice
# model is fitted on this group too, so these counts are in-sample: a regression check only (replies agreeing
# out of 208, the worst character's out of 26). Characters the audit never saw are in audit_heldout4.
MEASURED = {"binary": 192, "worst": 23}


def rows(character_id: str) -> list[dict]:
    return group_rows(GROUP, character_id)


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


def test_agreement_with_hand_labels_on_the_third_group():
    check_agreement(agreement(GROUP, [TUNING]), "heldout3", MEASURED)

"""The third group (8 characters): held out in the third session, tuning data since the fourth (see test_audit_heldout4)."""

from __future__ import annotations

from audit_groups import (
    FIXTURES,
    agreement,
    check_agreement,
    check_shape,
    group_ids,
)

from runtime.characters import load_card

GROUP = FIXTURES / "audit_heldout3"
TUNING = FIXTURES / "audit_generalisation"
IDS = group_ids(GROUP)
# Held out in the third session (184/208 then, README "Persona audits"); since the fourth session the voice
# model is fitted on this group too, so these counts are in-sample: a regression check only (replies agreeing
# out of 208, the worst character's out of 26). Characters the audit never saw are in audit_heldout4.
MEASURED = {"binary": 192, "worst": 23}


def test_the_group_is_new_big_and_labelled_with_hard_cases():
    check_shape(GROUP, [TUNING], characters=8, replies_each=25, total=200, labels=None,
                cases={"right-facts-wrong-voice", "other-character-voice", "generic-assistant", "very-short",
                       "unusual-in-character", "card-contradiction", "encyclopedic", "generic-name-drop"})


def test_the_voice_model_is_fitted_on_this_group_now():
    from runtime.audit import voice_fit, voice_model

    model = voice_model.load_model()
    ids = {load_card(GROUP / "cards" / f"{c}.json").id for c in IDS}
    assert ids <= set(model["trained_on"]) and GROUP.name in voice_fit.TUNING_GROUPS
    assert len(model["assistant"]["coef"]) == 384  # the assistant-mode head reads the reply's embedding


def test_agreement_with_hand_labels_on_the_third_group():
    check_agreement(agreement(GROUP, [TUNING]), "heldout3", MEASURED)

"""The persona audit on the fourth group: 10 characters written before the fourth session changed any scorer.

Held out in the fourth session (scored once there); since the fifth session tuning data for the rules and for
leave-one-character-out (not for the voice model's fit), so its agreement is a regression check now; the fifth group
(tests/test_audit_heldout5.py) is the held-out one.
"""

from __future__ import annotations

from audit_groups import (
    FIXTURES,
    HARD_CASES,
    agreement,
    check_agreement,
    check_shape,
    group_ids,
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


def test_the_group_is_new_big_and_labelled_with_hard_cases():
    check_shape(GROUP, TUNING, characters=10, replies_each=26, total=260,
                labels={"aligned": 12, "minor": 5, "misaligned": 9}, cases=HARD_CASES)


def test_this_group_is_tuning_data_for_the_rules_but_the_voice_model_never_saw_it():
    from runtime.audit import voice_fit, voice_model

    model = voice_model.load_model()
    ids = {load_card(GROUP / "cards" / f"{c}.json").id for c in IDS}
    assert model["trained_on"] and not set(model["trained_on"]) & ids
    assert GROUP.name not in voice_fit.TUNING_GROUPS and GROUP.name in voice_fit.LOCO_GROUPS


def test_agreement_with_hand_labels_on_the_fourth_held_out_group():
    check_agreement(agreement(GROUP, TUNING), "heldout4", MEASURED)

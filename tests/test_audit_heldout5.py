"""The persona audit on a fifth held-out group: 10 characters written before the fifth session changed any scorer."""

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

GROUP = FIXTURES / "audit_heldout5"
TUNING = [FIXTURES / "audit_generalisation", FIXTURES / "audit_heldout3", FIXTURES / "audit_heldout4"]
IDS = group_ids(GROUP)
# Measured once, after the fifth session's change was chosen on groups 1-4 alone by leave-one-character-out (README,
# "Persona audits"): replies agreeing (aligned vs not) out of 260, and the worst character's out of 26. A regression
# below either fails. 235/260 = 90.4 % (the 90 % overall, by under one point: 260 replies give about +-2 points
# of sampling error), worst 21/26 = 81 % (rex-hammond); the unchanged audit gave 229/260 = 88.1 %, worst 21/26.
# Both runs, with every reply's verdict: tests/bench/results/audit_heldout5_unchanged.json, audit_heldout5_final.json.
MEASURED = {"binary": 235, "worst": 21}


def test_the_group_is_new_big_and_labelled_with_hard_cases():
    everything = check_shape(GROUP, TUNING, characters=10, replies_each=26, total=260,
                             labels={"aligned": 12, "minor": 5, "misaligned": 9}, cases=HARD_CASES)
    # every character has a very short plain-assistant answer under its name ("391.", "Rome.")
    assert all(len(r["reply"].split()) <= 2 for r in everything if r["case"] == "ooc-request-done")


def test_nothing_that_fits_or_tunes_the_audit_reads_this_group():
    from runtime.audit import voice_fit, voice_model

    model = voice_model.load_model()
    ids = {load_card(GROUP / "cards" / f"{c}.json").id for c in IDS}
    assert model["trained_on"] and not set(model["trained_on"]) & ids
    assert GROUP.name not in voice_fit.TUNING_GROUPS + voice_fit.LOCO_GROUPS


def test_agreement_with_hand_labels_on_the_fifth_held_out_group():
    check_agreement(agreement(GROUP, TUNING), "heldout5", MEASURED)

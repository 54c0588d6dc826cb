"""Hand-labelled audit groups (tests/fixtures/audit_*): their cards, replies, and the audit's agreement with the labels."""

from __future__ import annotations

import json
from pathlib import Path

from runtime.characters import load_card

FIXTURES = Path(__file__).parent / "fixtures"
BUILTIN_CARDS = Path(__file__).resolve().parents[1] / "plugins" / "characters" / "cards"
# The hard cases every group since the fourth holds on purpose (labelling rules: each group's README).
HARD_CASES = {"right-facts-wrong-voice", "other-character-voice", "generic-assistant", "very-short", "voice-lapse",
              "unusual-in-character", "card-contradiction", "encyclopedic", "generic-name-drop", "identity",
              "in-character-refusal", "base-identity-mid-reply", "out-of-voice-habit"}


def group_ids(group: Path) -> list[str]:
    """The character ids of a group, sorted."""
    return sorted(p.stem for p in (group / "cards").glob("*.json"))


def group_rows(group: Path, character_id: str) -> list[dict]:
    """One character's labelled replies."""
    return [json.loads(line) for line in (group / "replies" / f"{character_id}.jsonl").read_text().splitlines()]


def agreement(group: Path, tuning: list[Path]) -> dict:
    """{id: (binary, three-way, replies)} agreeing with the labels, each scored against the whole catalog."""
    from runtime.audit import score_replies

    cards = {c: load_card(group / "cards" / f"{c}.json") for c in group_ids(group)}
    catalog = [load_card(p) for p in sorted(BUILTIN_CARDS.glob("*.json"))]
    for folder in tuning:
        catalog += [load_card(p) for p in sorted((folder / "cards").glob("*.json"))]
    catalog += list(cards.values())
    found = {}
    for character_id, character in cards.items():
        labelled = group_rows(group, character_id)
        results = score_replies(character, labelled, others=catalog)
        binary = sum((r["verdict"] == "aligned") == (row["label"] == "aligned") for row, r in zip(labelled, results))
        exact = sum(r["verdict"] == row["label"] for row, r in zip(labelled, results))
        found[character_id] = (binary, exact, len(labelled))
    return found


def check_agreement(found: dict, label: str, measured: dict) -> None:
    """Print the agreement per character and fail below the measured total or worst character."""
    total = sum(n for _, _, n in found.values())
    binary, exact = sum(b for b, _, _ in found.values()), sum(e for _, e, _ in found.values())
    print(f"\n{label}: binary {binary}/{total} = {binary / total:.3f}, three-way {exact}/{total} = {exact / total:.3f}")
    for character_id, (b, e, n) in found.items():
        print(f"  {character_id:16s} binary {b}/{n}   three-way {e}/{n}")
    assert binary >= measured["binary"], f"{binary}/{total} agree, {measured['binary']} were measured"
    assert min(b for b, _, _ in found.values()) >= measured["worst"], found


def check_shape(group: Path, tuning: list[Path], *, characters: int, replies_each: int, total: int,
                labels: dict | None, cases: set) -> list[dict]:
    """A group is new (no name shared with the tuning groups or built-ins), big, labelled with reasons, and holds
    the hard cases asked for; `labels`: each character's exact label counts (None: all three labels present).
    Returns every row."""
    from collections import Counter

    ids = group_ids(group)
    taken = {load_card(p).name for folder in tuning for p in (folder / "cards").glob("*.json")}
    taken |= {load_card(p).name for p in BUILTIN_CARDS.glob("*.json")}
    assert len(ids) >= characters and not {load_card(group / "cards" / f"{c}.json").name for c in ids} & taken
    everything = []
    for character_id in ids:
        character, replies = load_card(group / "cards" / f"{character_id}.json"), group_rows(group, character_id)
        assert character.description and character.personality and len(character.example_dialogues()) >= 2
        assert len(replies) >= replies_each
        assert all(r["reason"].strip() and r["character"] == character_id for r in replies)
        counts = Counter(r["label"] for r in replies)
        assert counts == labels if labels else set(counts) == {"aligned", "minor", "misaligned"}
        everything += replies
    assert len(everything) >= total
    assert cases <= {r["case"] for r in everything}
    return everything

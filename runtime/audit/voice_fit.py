"""Fit the voice model (voice_model.json) on labelled replies to the tuning characters only.

`python -m runtime.audit.voice_fit` reads the labelled sets named below, computes the card-relative
features of every reply to a tuning character and fits two logistic regressions with scikit-learn
(aligned vs not, misaligned vs not). Held-out characters are never read.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from runtime.audit import voice_model
from runtime.audit.scorers import ScoringContext, as_text, character_lines, other_voices, voice_features
from runtime.characters import load_card

REGULARISATION = 0.5  # sklearn's C: strong enough that ~200 replies cannot memorise their characters
MADE_WEIGHT = 0.5  # an example made from a card counts half a hand-labelled reply


def tuning_rows(generalisation: Path, builtin_labels: Path, builtin_cards: Path) -> list[tuple]:
    """(character, labelled row) for the tuning characters and the built-in set's tuning half."""
    split = json.loads((generalisation / "split.json").read_text())
    cards = {cid: load_card(generalisation / "cards" / f"{cid}.json") for cid in split["tune"]}
    builtins = {p.stem: load_card(p) for p in sorted(builtin_cards.glob("*.json"))}
    rows = []
    for cid, character in cards.items():
        for line in (generalisation / "replies" / f"{cid}.jsonl").read_text().splitlines():
            rows.append((character, json.loads(line)))
    for path in sorted(builtin_labels.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row["split"] == "tune":
                rows.append((builtins[row["character"]], row))
    catalog = list(cards.values()) + list(builtins.values())  # the voices a tuning reply is compared with
    return [(character, row, catalog) for character, row in rows]


def made_rows(catalog, per_card: int = 8) -> list[tuple]:
    """Examples made from the cards alone, no labels needed.

    For each card: each of its own lines (left out of the references) is aligned; lines of other
    characters (left out of the other voices) are misaligned; its own lines flattened into plain
    sentences (no caps, emoji, actions or exclamations, sentence case, full stops) are minor.
    """
    rows = []
    for character in catalog:
        own = character_lines(character)
        for line in own:
            rows.append((character, {"reply": line, "label": "aligned"}, catalog, line, None))
            flat = flatten(line)
            if _changed(flat, line):
                rows.append((character, {"reply": flat, "label": "minor"}, catalog, None, None))
        strangers = [(c, t) for c in catalog if c.id != character.id for t in character_lines(c)]
        step = max(1, len(strangers) // per_card)
        for other, line in strangers[::step][:per_card]:
            rows.append((character, {"reply": line, "label": "misaligned"}, catalog, None, other.id))
    return rows


def _changed(flat: str, line: str) -> bool:
    return sum(a != b for a, b in zip(flat, line)) + abs(len(flat) - len(line)) >= 3


def flatten(line: str) -> str:
    """A line's words in a plain voice: no actions, emoji or caps, sentence case, full stops."""
    text = re.sub(r"\*[^*]+\*", "", line)
    text = re.sub(r"[\U0001F300-\U0001FAFF\u2600-\u27BF#]", "", text)
    text = re.sub(r"\b[A-Z]{2,}\b", lambda m: m.group(0).capitalize(), text)
    text = re.sub(r"[!?]+", ".", text).replace("\n", ". ")
    parts = [p.strip() for p in re.split(r"(?<=\.)\s+", text) if p.strip(" .")]
    parts = [p[0].upper() + p[1:] + ("" if p.endswith(".") else ".") for p in parts]
    return re.sub(r"\s+", " ", " ".join(parts)).strip()


def feature_matrix(rows) -> list[list[float]]:
    """The voice model's features of every row, one context per character (and per line left out)."""
    contexts, matrix = {}, []
    for character, row, catalog, *leave_out in rows:
        drop, stranger = (leave_out + [None, None])[:2]
        key = (character.id, drop, stranger)
        if key not in contexts:
            others = [c for c in catalog if c.id != stranger]
            context = ScoringContext(character, others=other_voices(others, character))
            if drop is not None:  # the line scored is not among the references it is scored against
                kept = [t for t in character_lines(character) if t != drop]
                context.voice_texts = lambda kept=kept: kept
            context.prepare([r["reply"] for c, r, *_ in rows if c.id == character.id])
            contexts[key] = context
        text, _ = as_text(row["reply"])
        values, _, _ = voice_features(text, contexts[key])
        matrix.append([values[f] for f in voice_model.FEATURES])
    return matrix


def fit(rows, made=()) -> dict:
    """Standardised features and two logistic heads, as plain JSON (made rows count MADE_WEIGHT each)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    rows = list(rows) + list(made)
    weights = np.array([1.0] * (len(rows) - len(made)) + [MADE_WEIGHT] * len(made))
    x = np.array(feature_matrix(rows))
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - mean) / scale
    model = {"features": list(voice_model.FEATURES), "mean": mean.round(6).tolist(), "scale": scale.round(6).tolist(),
             "trained_on": sorted({c.id for c, *_ in rows}), "replies": len(rows) - len(made), "made": len(made)}
    for head in ("aligned", "misaligned"):
        y = np.array([row["label"] == head for _, row, *_ in rows])
        lr = LogisticRegression(C=REGULARISATION, max_iter=2000, class_weight="balanced").fit(z, y, sample_weight=weights)
        model[head] = {"intercept": round(float(lr.intercept_[0]), 6), "coef": lr.coef_[0].round(6).tolist()}
    return model


def main(argv=None) -> None:
    """Fit on the repository's labelled sets and write voice_model.json."""
    root = Path(argv[0]) if argv else Path(__file__).resolve().parents[2]
    fixtures = root / "tests" / "fixtures"
    rows = tuning_rows(fixtures / "audit_generalisation", fixtures / "audit_labels",
                       root / "plugins" / "characters" / "cards")
    model = fit(rows, made_rows(rows[0][2]))
    voice_model.MODEL_FILE.write_text(json.dumps(model, indent=1) + "\n")
    print(f"fitted on {model['replies']} replies to {len(model['trained_on'])} characters -> {voice_model.MODEL_FILE}")


if __name__ == "__main__":
    main(sys.argv[1:])

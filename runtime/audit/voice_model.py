"""The learned voice check: features of a reply against a card's own voice, other voices and a plain assistant.

Features are relative to the card (distances to its own lines, not absolute values), so one small
logistic model, fitted on some characters (`runtime.audit.voice_fit`), applies to any card. Its
coefficients ship as JSON next to this file: no pickles, no download, numpy only at scoring time.
"""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from pathlib import Path

from runtime.audit import style

MODEL_FILE = Path(__file__).with_name("voice_model.json")
# P(misaligned) at or above which a reply is misaligned, P(aligned) under which it is minor ([audit] voice_misaligned,
# voice_aligned override them). 0.6 / 0.4 did better in leave-one-character-out over groups 1-4 (862 vs 850 of 936)
# but let right-facts-wrong-voice replies of the built-in set's held-out half pass (30/33, its test asks >= 32): kept.
MISALIGNED_AT, ALIGNED_AT = 0.5, 0.5
VOICES_FILE = Path(__file__).with_name("voices.json")

# Style gaps from the character's own lines, by habit: how far (in the card's own spreads) the reply strays.
GAP_GROUPS = {"gap_casing": ("lower_start", "caps"), "gap_punctuation": ("exclaim", "question", "end_period"),
              "gap_emoji": ("emoji", "hashtag", "action"), "gap_length": ("sentence_words", "word_chars"),
              "gap_register": ("contractions", "commas", "first_person", "second_person")}
FEATURES = ("emb_own", "emb_generic", "emb_other", "emb_confusion", "style_own", "style_generic", "style_other",
            "style_confusion", "markers", "encyclopedic", "list_shaped", "tells", "words", *GAP_GROUPS, "assistant",
            "ask_identity", "ask_ooc", "identity_generic", "ooc_generic")
# What the user asked, by kind: an in-character answer to these talks about AIs, prompts or tasks without being
# an assistant (the leakage and rules scorers catch the base model answering them), so the voice model may
# weigh assistant-likeness less there.
IDENTITY_QUESTION = re.compile(r"\b(?:are you (?:an? |the )?(?:ai|bot|robot|chatbot|machine|real|human|program|computer|"
                               r"person)|who (?:made|created|built|trained) you|what (?:model|are you)\b)", re.I)
OOC_REQUEST = re.compile(r"\b(?:ignore|instructions?|system prompt|prompt|write (?:me )?(?:a|an|my)|code|essay|python|"
                         r"translate|summari[sz]e|homework|assignment|calculate|convert)\b|\d+\s*[x×*+/-]\s*\d+|"
                         r"\bwhat(?:'s| is) \d", re.I)


@lru_cache(maxsize=1)
def stock_voices() -> dict[str, list[str]]:
    """Common role-play registers the confusion check compares with (voices.json)."""
    data = json.loads(VOICES_FILE.read_text(encoding="utf-8"))
    return {name: lines for name, lines in data.items() if not name.startswith("_")}


@lru_cache(maxsize=1)
def load_model() -> dict:
    """The fitted coefficients (voice_model.json)."""
    return json.loads(MODEL_FILE.read_text(encoding="utf-8"))


def _top(similarities, k: int) -> float:
    values = sorted(similarities.tolist(), reverse=True)[:k]
    return sum(values) / len(values) if values else 0.0


def features(text: str, voice: dict, vector=None, tells: int = 0, prompt: str = "") -> tuple[dict, dict]:
    """(feature values, evidence) of one reply, to `prompt`, against a prepared voice (see VoiceRefs in scorers)."""
    vec = style.style_vector(text)
    own_style = style.distance(vec, voice["own_style"])
    generic_style = style.distance(vec, voice["generic_style"])
    others_style = {name: style.distance(vec, p) for name, p in voice["other_styles"].items()}
    nearest_style = min(others_style, key=others_style.get) if others_style else None
    other_style = others_style[nearest_style] if nearest_style else 4.0
    evidence = {"nearest_style": nearest_style}
    if vector is not None and voice.get("own_vectors") is not None:
        own = _top(voice["own_vectors"] @ vector, 3)
        generic = _top(voice["generic_vectors"] @ vector, 3)
        others = {name: _top(v @ vector, 2) for name, v in voice["other_vectors"].items()}
        nearest = max(others, key=others.get) if others else None
        other = others[nearest] if nearest else 0.0
        evidence["nearest_voice"] = nearest
        assistant = assistant_mode(vector)
    else:  # no embedding model: the embedding features sit at the fitted means (they say nothing)
        means = dict(zip(FEATURES, load_model()["mean"]))
        own, generic, other = means["emb_own"], means["emb_generic"], means["emb_other"]
        assistant = means["assistant"]
    values = {
        "emb_own": own, "emb_generic": generic, "emb_other": other,
        "emb_confusion": max(generic, other) - own,
        "style_own": own_style, "style_generic": generic_style, "style_other": other_style,
        "style_confusion": own_style - min(generic_style, other_style),
        "markers": min(2.0, style.marker_rate(text, voice["markers"])),
        "encyclopedic": style.encyclopedic(text), "list_shaped": style.list_shaped(text),
        "tells": min(3.0, float(tells)), "words": math.log(1 + len(style.words(text))),
        "assistant": assistant,
    }
    identity, ooc = float(bool(IDENTITY_QUESTION.search(prompt))), float(bool(OOC_REQUEST.search(prompt)))
    values.update(ask_identity=identity, ask_ooc=ooc, identity_generic=identity * (generic - own),
                  ooc_generic=ooc * (generic - own))
    means, spreads = voice["own_style"]
    gap = {k: min(4.0, abs(vec[k] - m) / sd) for k, m, sd in zip(style.FEATURES, means, spreads)}
    values.update({group: max(gap[k] for k in keys) for group, keys in GAP_GROUPS.items()})
    evidence.update(style_gaps=_gaps(vec, voice["own_style"]), other_voice=other - own)
    return values, evidence


def assistant_mode(vector) -> float:
    """P(the reply reads as a plain assistant's answer, whoever the character), from its embedding alone.

    A logistic model on the 384 all-MiniLM-L6-v2 dimensions, fitted on labelled replies of many
    characters (encyclopedic, list-shaped, generic or name-dropping answers, tasks done as an assistant,
    the base model's identity against everything else); card-independent, so it carries to new cards.
    """
    head = load_model().get("assistant")
    if head is None:
        return 0.5
    logit = head["intercept"] + sum(a * float(b) for a, b in zip(head["coef"], vector))
    return 1 / (1 + math.exp(-max(-30.0, min(30.0, logit))))


def _gaps(vector: dict, voice) -> list[str]:
    """The style features furthest from the character's own lines, worst first."""
    means, spreads = voice
    gaps = sorted(((abs(vector[k] - m) / s, k) for k, m, s in zip(style.FEATURES, means, spreads)), reverse=True)
    return [k for gap, k in gaps[:3] if gap >= 2.0]


def probabilities(values: dict) -> dict:
    """P(aligned) and P(misaligned) from the fitted logistic models."""
    model = load_model()
    z = [(values[f] - m) / s for f, m, s in zip(FEATURES, model["mean"], model["scale"])]
    out = {}
    for head in ("aligned", "misaligned"):
        w = model[head]
        logit = w["intercept"] + sum(a * b for a, b in zip(w["coef"], z))
        out[head] = 1 / (1 + math.exp(-max(-30.0, min(30.0, logit))))
    return out

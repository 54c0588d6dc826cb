"""Screening replies before they may become training examples: degenerate, unsafe, leaking, misaligned.

Logged replies (curation) and bootstrap candidates go through the same checks: the degeneration
guard on the finished text, a short list of unsafe content, then the persona audit's scorers
(leakage, the card's rules, voice, the judge when configured).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from runtime.audit.probes import Probe
from runtime.audit.scorers import BaseIdentity, ScoringContext, collect_scorers, other_voices
from runtime.audit.verdicts import MISALIGNED, score_reply
from runtime.generation.guard import check_reply

SCREEN_RULES = ("degenerate", "unsafe", "leakage", "misaligned")  # in the order they are checked

# Content no built-in character should learn to say, whatever a user steered it into.
UNSAFE = [
    ("sexual content", r"\b(?:sex|sexual(?:ly)?|sexy|naked|nude|nudes|porn\w*|orgasm\w*|genitals?|penis|vagina|"
                       r"erotic\w*|horny|masturbat\w*|intercourse|nipples?|aroused|boob(?:s|ie|ies)?|tits)\b"),
    ("self-harm", r"\b(?:kill|hurt|harm|cut) yourself\b|\bsuicid\w*\b|\bend your (?:own )?life\b"),
    ("weapons or drugs", r"\bhow to (?:make|build|cook) (?:a |an )?(?:bomb|explosives?|meth|napalm|poison)\b"),
    ("hate", r"\b(?:heil hitler|white power|gas the)\b"),
]
_UNSAFE = [(what, re.compile(pattern, re.I)) for what, pattern in UNSAFE]


def unsafe(text: str, prompt: str = "") -> str | None:
    """What unsafe content a reply has (None: none); words the user said first are still unsafe to learn."""
    for what, pattern in _UNSAFE:
        match = pattern.search(text or "")
        if match:
            return f"{what} ({match.group(0)!r})"
    return None


@dataclass
class Screened:
    """One reply's outcome: the rule that drops it (None: it may be trained on), why, and its audit."""

    rule: str | None
    reasons: list = field(default_factory=list)
    verdict: str = ""
    p_aligned: float = 0.0


def scoring_context(character, settings=None, pm=None, catalog=None) -> ScoringContext:
    """The audit's context for a character without an engine: the base's identity from its files."""
    base = BaseIdentity.for_settings(settings) if settings is not None else BaseIdentity()
    others = other_voices(catalog.characters.values(), character) if catalog is not None else {}
    config = dict(getattr(settings, "audit", None) or {}) if settings is not None else {}
    return ScoringContext(character=character, base=base, config=config, others=others)


def screen(items: list[dict], context: ScoringContext, pm=None, scorers: dict | None = None) -> list[Screened]:
    """Screen replies ({"prompt", "reply", "kind"?}); one Screened per item, in order."""
    scorers = scorers if scorers is not None else collect_scorers(pm)
    context.prepare([item["reply"] for item in items])  # one batch of embeddings, not one per reply
    results = []
    for item in items:
        text, prompt = item.get("reply") or "", item.get("prompt") or ""
        verdict = check_reply(text)
        if verdict.degenerate:
            results.append(Screened("degenerate", [verdict.reason]))
            continue
        harmful = unsafe(text, prompt)
        if harmful:
            results.append(Screened("unsafe", [harmful]))
            continue
        scored = score_reply(text, Probe("screen", item.get("kind") or "style", [prompt or " "]), context, scorers)
        p_aligned = (scored["scores"].get("voice") or {}).get("p_aligned") or 0.0
        rule = "leakage" if scored["leakage"] else ("misaligned" if scored["verdict"] == MISALIGNED else None)
        results.append(Screened(rule, scored["reasons"], scored["verdict"], float(p_aligned)))
    return results

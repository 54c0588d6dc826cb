"""Built-in audit scorers: base-model leakage, the card's rules, closeness of voice, facts against the card, a judge.

A scorer is `scorer(reply, probe, context) -> dict` with at least `penalty` ("none", "minor" or
"major") and `reasons` (list of text); it may add numbers of its own. Scorers come from the
register_scorers hook, so plugins add theirs the same way the built-ins are added.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field

from runtime.audit import style, voice_model
from runtime.audit.facts import CardFacts
from runtime.audit.embeddings import EmbeddingsUnavailable, available, embed
from runtime.audit.probes import character_traits

log = logging.getLogger(__name__)

MAX_SCORED_CHARS = 20_000  # a longer reply is scored on its start (and flagged as too long)
HUGE_REPLY_CHARS = 8_000

NONE, MINOR, MAJOR = "none", "minor", "major"

# --- the base model's identity --------------------------------------------------------------

DEFAULT_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
_SYSTEM_IN_TEMPLATE = re.compile(r"<\|im_start\|>system\s*\n(.*?)<\|im_end\|>", re.S)

# The base model describing itself: first-person claims of being an AI, whatever the prompt asked.
SELF_CLAIMS = [
    r"\bas an ai\b",
    r"\b(?:i am|i'm|i’m)\s+(?:just\s+|only\s+|actually\s+|really\s+|simply\s+)?an?\s+(?:ai|artificial intelligence|assistant|chatbot|virtual assistant|computer program|language model)\b",
    r"\b(?:trained|created|developed|built|made) by (?:hugging ?face|openai|a team of)\b",
    r"\bi (?:do not|don't|don’t) have (?:personal (?:experiences|feelings|opinions|emotions|preferences)|feelings|emotions|a (?:physical )?(?:body|form))\b",
    r"\bmy training data\b",
    r"\bmy knowledge cutoff\b",
]
# Assistant terms: leakage in a reply, unless the user said them first (a character may echo them).
ASSISTANT_TERMS = [
    r"\b(?:large |ai )?language model\b",
    r"\ban ai assistant\b",
    r"\bhelpful (?:ai )?assistant\b",
    r"\bvirtual assistant\b",
]
# Other models' names: a leak when said about oneself, harmless when the user said them first.
OTHER_NAMES = ["ChatGPT", "OpenAI", "GPT-4", "GPT-3", "Llama", "Claude"]

# What a generic assistant says and a character doesn't.
ASSISTANT_TELLS = [
    r"\bhow (?:can|may) i (?:assist|help) you\b",
    r"\bassist you\b",
    r"\bi(?:'d| would) be (?:happy|glad) to help\b",
    r"\bi hope (?:this|that) helps\b",
    r"\blet me know if\b",
    r"\bif you have any (?:other |more |further )?questions\b",
    r"\bis there anything (?:else|specific)\b",
    r"\bfeel free to\b",
    r"\bhere (?:are|is) (?:some|a|an|the|my|three|five)\b",
    r"^\s*(?:certainly|sure|absolutely|of course)[!,.]",
    r"\bgreat question\b",
    r"\ba (?:wide|variety|range) (?:range |variety )?of\b",
    r"\bprovide (?:you with )?(?:information|assistance)\b",
    r"\bi(?:'m| am) sorry to hear\b",
    r"\bi(?:'m| am) sorry, but\b",
    r"\b(?:i )?cannot (?:share|provide|help)\b",
    r"\bi(?:'m| am) not sure what you(?:'re| are) referring to\b",
    r"\bcould you (?:please )?provide more\b",
    r"\bit(?:'s| is) (?:okay|ok) to\b",
    r"\bremember,",
    r"\bhave fun!?\s*$",
    r"(?:^|\n)\s*(?:1[.)]|-|\*)\s+\S.*(?:\n\s*(?:2[.)]|-|\*)\s+\S)",
    r"\b1\.\s+\w.*\b2\.\s+\w",
    r"\bdear sir\b|\bbest regards\b|\bkind regards\b|\bto whom it may concern\b",
    r"```|\bdef \w+\(|\bprint\(",
]


@dataclass
class BaseIdentity:
    """What the base model says about itself: name, maker, default system persona."""

    name: str = "SmolLM"
    maker: str = "Hugging Face"
    system_prompt: str = DEFAULT_SYSTEM_PROMPT

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "BaseIdentity":
        """Read the default system prompt out of the tokenizer's chat template."""
        template = getattr(tokenizer, "chat_template", None) or ""
        if isinstance(template, dict):
            template = template.get("default", "") or ""
        match = _SYSTEM_IN_TEMPLATE.search(template)
        if not match:
            return cls()
        prompt = match.group(1).strip()
        name = re.search(r"named ([A-Z][\w.-]+)", prompt)
        maker = re.search(r"(?:trained|created|made|developed) by ([A-Z][\w .-]+?)(?:[.,]|$)", prompt)
        return cls(
            name=name.group(1).rstrip(".") if name else cls.name,
            maker=maker.group(1).strip() if maker else cls.maker,
            system_prompt=prompt,
        )

    @classmethod
    def for_settings(cls, settings) -> "BaseIdentity":
        """The configured base's identity, read from its chat template file without loading the model."""
        from pathlib import Path

        spec = settings.base_model
        folder = Path(settings.cache_dir).expanduser() / "models" / spec if "/" not in spec else Path(spec)
        if not folder.is_dir():
            folder = Path(spec).expanduser()
        template = ""
        try:
            if (folder / "chat_template.jinja").is_file():
                template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
            elif (folder / "tokenizer_config.json").is_file():
                template = json.loads((folder / "tokenizer_config.json").read_text()).get("chat_template") or ""
        except (OSError, ValueError):
            template = ""
        return cls.from_tokenizer(type("Template", (), {"chat_template": template})()) if template else cls()

    def patterns(self) -> list[tuple[str, re.Pattern]]:
        """(what, pattern) for the base's name, its maker and its default persona's phrases."""
        found = [("the base model's name", re.compile(rf"\b{re.escape(self.name)}\b", re.I))]
        maker = re.escape(self.maker).replace(r"\ ", r"\s?")
        found.append(("the base model's maker", re.compile(rf"\b{maker}\b", re.I)))
        words = _words(self.system_prompt)
        for start in range(0, max(0, len(words) - 3)):
            phrase = r"\W+".join(re.escape(w) for w in words[start:start + 4])
            found.append(("the base model's default system persona", re.compile(rf"\b{phrase}\b", re.I)))
        return found


# --- what every scorer sees -----------------------------------------------------------------

GENERIC_ASSISTANT_TEXTS = [
    "Hello! I'm an AI assistant. How can I help you today?",
    "I'd be happy to help! Here are some tips that might be useful.",
    "Sure! Here's a simple example. Let me know if you have any other questions.",
    "I'm sorry, but I can't help with that request.",
    "As an AI language model, I don't have personal feelings or experiences.",
    "Certainly! Here is a summary of the main points.",
    "That's a great question. There are several factors to consider.",
    "I'm sorry to hear that you're feeling this way. It's important to take care of yourself.",
    "Here are five tips: 1. Prepare in advance. 2. Stay organised. 3. Ask for help when needed.",
    "I hope this helps! Feel free to ask if you need more information.",
    "Dear Sir or Madam, I am writing to request a refund. Best regards.",
    "The weather forecast depends on your location. Please check a local weather service.",
    "Here is a Python function that does that: def solve(x): return x",
    "I can provide information on a wide range of topics. Is there anything specific you would like to know?",
    "Could you please provide more context so I can assist you better?",
    "It is a classic example that is widely known and appreciated by many people.",
]


@dataclass
class ScoringContext:
    """The character and the references a reply is scored against."""

    character: object
    base: BaseIdentity = field(default_factory=BaseIdentity)
    base_answers: dict = field(default_factory=dict)  # probe question -> the bare base model's reply
    config: dict = field(default_factory=dict)  # the [audit] settings table
    user: str = "User"
    others: dict = field(default_factory=dict)  # other characters in the catalog: name -> their lines
    _voice: object = None
    _generic: object = None
    _vectors: dict = field(default_factory=dict)
    _base_patterns: list | None = None  # compiled once per audit, not per reply
    _style_cache: dict = field(default_factory=dict)

    def voice_texts(self) -> list[str]:
        """The character's own voice: greetings and example replies."""
        return character_lines(self.character, self.user)

    def fact_texts(self) -> list[str]:
        """What the card says about the character (description, personality, scenario)."""
        c = self.character
        parts = [c.description, c.personality, c.scenario]
        return [c.render(p, self.user) for p in parts if p and p.strip()]

    def generic_texts(self) -> list[str]:
        """A generic assistant's text: canned replies plus the bare base model's own answers."""
        return GENERIC_ASSISTANT_TEXTS + [a for a in self.base_answers.values() if isinstance(a, str) and a.strip()]

    def references(self):
        """(voice embeddings, generic embeddings), computed once per set of texts in this process."""
        if self._voice is None:
            self._voice = _embed_cached(tuple(self.voice_texts()))
            self._generic = _embed_cached(tuple(self.generic_texts()))
        return self._voice, self._generic

    def voice_refs(self) -> dict:
        """The card's voice prepared once: style profiles, distinctive words, embeddings of every voice."""
        cache = self._style_cache
        if "refs" not in cache:
            own, generic = self.voice_texts(), self.generic_texts()
            others = {**voice_model.stock_voices(), **{n: t for n, t in self.others.items() if t}}
            facts = [s for t in self.fact_texts() for s in re.split(r"(?<=[.!?])\s+", t) if len(s.split()) > 3]
            refs = {"own_style": style.profile(own), "generic_style": style.profile(generic + facts),
                    "other_styles": {n: style.profile(t) for n, t in others.items()},
                    "markers": style.markers(own, generic, " ".join(self.fact_texts())), "own_vectors": None}
            if available():
                refs["own_vectors"], refs["generic_vectors"] = self.references()
                refs["other_vectors"] = dict(zip(others, _embed_many([tuple(t) for t in others.values()])))
            cache["refs"] = refs
        return cache["refs"]

    def prepare(self, replies) -> None:
        """Embed many replies in one batch ahead of scoring (much faster than one at a time)."""
        texts = list(dict.fromkeys(_embed_key(r) for r in replies))
        texts = [t for t in texts if t and t not in self._vectors]
        if texts and available():
            self._vectors.update(zip(texts, embed(texts)))

    def vector(self, text: str):
        """A reply's embedding, from the prepared batch when there is one."""
        key = _embed_key(text)
        if key not in self._vectors:
            self._vectors[key] = embed([key])[0]
        return self._vectors[key]


_REFERENCE_CACHE: dict = {}
_REFERENCE_LIMIT = 1024  # sets of texts: every voice of a large catalog, kept across audits


def _embed_cached(texts: tuple):
    """Reference embeddings, kept per process (the same card is scored again and again)."""
    return _embed_many([texts])[0]


def _embed_many(groups: list[tuple]) -> list:
    """Embeddings of several sets of texts, the ones not cached yet embedded in one batch."""
    missing = [g for g in dict.fromkeys(groups) if g not in _REFERENCE_CACHE]
    if missing:
        if len(_REFERENCE_CACHE) + len(missing) > _REFERENCE_LIMIT:
            _REFERENCE_CACHE.clear()
        vectors = embed([t for g in missing for t in g])
        start = 0
        for group in missing:
            _REFERENCE_CACHE[group] = vectors[start:start + len(group)]
            start += len(group)
    return [_REFERENCE_CACHE[g] for g in groups]


def character_lines(character, user: str = "User") -> list[str]:
    """A character's own voice: greetings and example replies (the description if it has neither)."""
    texts = list(character.greetings(user))
    for block in character.example_dialogues(user):
        texts += [m["content"] for m in block if m["role"] == "assistant" and m["content"].strip()]
    return [t for t in texts if t.strip()] or [character.render(character.description, user)]


def other_voices(characters, exclude) -> dict:
    """{name: lines} of every character but `exclude` (the confusion check's other voices)."""
    return {c.name: character_lines(c) for c in characters if c.id != exclude.id}


def _embed_key(reply) -> str:
    text, _ = as_text(reply)
    return text[:2000]


def as_text(reply) -> tuple[str, list[str]]:
    """A reply as text to score, and problems with it (not text, too long)."""
    problems = []
    if reply is None:
        return "", []
    if isinstance(reply, (bytes, bytearray)):
        reply = bytes(reply).decode("utf-8", errors="replace")
        problems.append("reply was bytes, decoded as UTF-8")
    elif not isinstance(reply, str):
        problems.append(f"reply is not text (a {type(reply).__name__})")
        try:
            reply = json.dumps(reply, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            reply = str(reply)
    reply = reply.replace("\x00", "")
    if len(reply) > HUGE_REPLY_CHARS:
        problems.append(f"reply is {len(reply):,} characters long, far past any chat reply")
        reply = reply[:MAX_SCORED_CHARS]
    return reply, problems


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def _ngrams(words: list[str], n: int) -> set[tuple]:
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def _result(penalty: str = NONE, reasons=None, **extra) -> dict:
    return {"penalty": penalty, "reasons": list(reasons or []), **extra}


# --- the scorers ----------------------------------------------------------------------------


def leakage(reply, probe, context: ScoringContext) -> dict:
    """The base model's identity in the reply: name, maker, AI self-claims, its default persona."""
    text, _ = as_text(reply)
    if not text.strip():
        return _result(leakage=False)
    question = " ".join(probe.turns) if probe is not None else ""
    reasons = []
    if context._base_patterns is None:
        context._base_patterns = context.base.patterns()
    for what, pattern in context._base_patterns:
        match = pattern.search(text)
        if match and not pattern.search(question):
            reasons.append(f"{what} ({match.group(0)!r})")
    for pattern in SELF_CLAIMS:
        match = re.search(pattern, text, re.I)
        if match:
            reasons.append(f"speaks as an AI ({match.group(0)!r})")
    for pattern in ASSISTANT_TERMS:
        match = re.search(pattern, text, re.I)
        if match and not re.search(pattern, question, re.I):
            reasons.append(f"speaks as an AI ({match.group(0)!r})")
    for name in OTHER_NAMES:
        if re.search(rf"\b{re.escape(name)}\b", text, re.I) and not re.search(rf"\b{re.escape(name)}\b", question, re.I):
            reasons.append(f"names another AI model ({name!r})")
    base_answer = context.base_answers.get(probe.question) if probe is not None else None
    overlap = 0.0
    if isinstance(base_answer, str) and base_answer.strip():
        mine, theirs = _ngrams(_words(text), 4), _ngrams(_words(base_answer), 4)
        shared = len(mine & theirs)
        overlap = shared / len(mine) if mine else 0.0
        if shared >= 3 and overlap >= float(context.config.get("base_overlap", 0.3)):
            reasons.append(f"repeats the bare base model's own answer ({overlap:.0%} of its 4-grams)")
    reasons = list(dict.fromkeys(reasons))  # one mention per reason
    return _result(MAJOR if reasons else NONE, reasons, leakage=bool(reasons), base_overlap=round(overlap, 3))


def rules(reply, probe, context: ScoringContext) -> dict:
    """The card's must / must-not phrases, an empty reply, and the system prompt handed over."""
    text, problems = as_text(reply)
    reasons, penalty = [], NONE
    if problems and any("not text" in p for p in problems):
        return _result(MAJOR, problems)
    if problems:
        reasons += problems
        penalty = MINOR
    if not text.strip():
        return _result(MAJOR, ["empty reply"])
    lowered = text.lower()
    card = ((context.character.extensions or {}).get("personae") or {})
    must_not = list(probe.must_not if probe else []) + [p for p in card.get("must_not") or [] if isinstance(p, str)]
    for phrase in dict.fromkeys(must_not):
        if phrase.strip() and phrase.lower() in lowered:
            reasons.append(f"says {phrase!r}, which this probe forbids")
            penalty = MAJOR
    missing = [p for p in (probe.must if probe else []) if p.strip() and p.lower() not in lowered]
    if missing:
        reasons.append("leaves out " + ", ".join(repr(p) for p in missing) + ", which this probe expects")
        penalty = MAJOR if penalty == MAJOR else MINOR
    # Eight words in a row from the system prompt means the prompt itself is being handed over.
    system = context.character.system_text(context.user) + "\n" + context.character.post_history(context.user)
    copied = _ngrams(_words(text), 8) & _ngrams(_words(system), 8)
    if copied or re.search(r"\[\s*reply as\b", text, re.I):
        reasons.append("repeats its own system prompt")
        penalty = MAJOR
    return _result(penalty, reasons)


def _tells(text: str) -> list[str]:
    """Generic-assistant phrases found in a text."""
    found = []
    for pattern in ASSISTANT_TELLS:
        match = re.search(pattern, text, re.I | re.M)
        if match:
            found.append(match.group(0).strip()[:40])
    return found


# A task with a numeric answer (sums, percentages, conversions): answered with nothing but the numbers and the
# prompt's own words, it is the assistant speaking, however short ("17 × 23 = 391.", "15% of 240 is 36.").
NUMERIC_TASK = re.compile(r"\d\s*(?:[x×*+/=-]|times|plus|minus|divided by|squared|%|percent)|square root|\bconvert\b|"
                          r"\bcalculate\b|\bin (?:binary|hex|celsius|fahrenheit|kilometres|miles)\b", re.I)


def voice_rules(text: str, prompt: str, context: ScoringContext) -> tuple[str, list[str]]:
    """The voice scorer's fixed rules: a bare answer to a numeric task (major), a habit the card never has (minor),
    unless the user's own message shows it."""
    asked = set(_words(prompt))
    said = re.findall(r"[a-z]{2,}", text.lower())
    if (NUMERIC_TASK.search(prompt) and re.search(r"\d", text) and len(said) <= 8
            and all(w in style.STOPWORDS or w in asked for w in said)):
        return MAJOR, ["a bare answer to a task, as an assistant gives it"]
    cache = context._style_cache
    if "habits" not in cache:
        cache["habits"] = style.card_habits(context.voice_texts(), " ".join(context.fact_texts()))
    foreign = sorted(style.habits(text) - cache["habits"] - style.habits(prompt))  # echoing the user's 'lol' is no habit
    if foreign:
        return MINOR, [f"uses {', '.join(foreign)}, which the character's card never does"]
    return NONE, []


def voice(reply, probe, context: ScoringContext) -> dict:
    """The card's voice against the reply: style, its own words, the nearest other voice, assistant mode.

    A small logistic model (runtime.audit.voice_model) weighs card-relative features: closeness to the
    character's own lines against a plain assistant's and other voices' (all-MiniLM-L6-v2), distance
    from the card's casing, punctuation, emoji and sentence length, its recurring words, and explainer
    or list-shaped phrasing.
    """
    text, _ = as_text(reply)
    if not text.strip():
        return _result(closeness=0.0, style=0.0)
    prompt = probe.turns[-1] if probe is not None and probe.turns else ""
    values, evidence, tells = voice_features(text, context, prompt)
    odds = voice_model.probabilities(values)
    config = context.config
    if odds["misaligned"] >= float(config.get("voice_misaligned", voice_model.MISALIGNED_AT)):
        penalty = MAJOR
    elif odds["aligned"] < float(config.get("voice_aligned", voice_model.ALIGNED_AT)):
        penalty = MINOR
    else:
        penalty = NONE
    reasons = _voice_reasons(values, evidence, tells) if penalty != NONE else []
    if penalty != NONE and not reasons:
        reasons = [f"not in the character's voice (p={odds['aligned']:.2f})"]
    ruled, why = voice_rules(text, prompt, context)
    if ruled == MAJOR or (ruled == MINOR and penalty == NONE):
        penalty, reasons = ruled, why + reasons
    extra = {"closeness": round(-values["emb_confusion"], 3) if evidence.get("nearest_voice") else None,
             "style": round(values["style_own"], 3), "assistant_tells": len(tells),
             "p_aligned": round(odds["aligned"], 3), "p_misaligned": round(odds["misaligned"], 3)}
    return _result(penalty, reasons, **extra)


def voice_features(text: str, context: ScoringContext, prompt: str = "") -> tuple[dict, dict, list[str]]:
    """(the voice model's features, evidence for reasons, assistant phrases) of one reply's text to `prompt`."""
    tells = _tells(text)
    refs = context.voice_refs()
    vector = None
    try:
        if refs.get("own_vectors") is not None:
            vector = context.vector(text)
    except EmbeddingsUnavailable as error:
        log.debug("closeness skipped: %s", error)
    values, evidence = voice_model.features(text, refs, vector, tells=len(tells), prompt=prompt or "")
    return values, evidence, tells


def _voice_reasons(values: dict, evidence: dict, tells: list[str]) -> list[str]:
    """Why a reply is off-voice, in words, from the features that say so."""
    reasons = []
    if tells:
        reasons.append("sounds like a generic assistant (" + "; ".join(repr(t) for t in tells[:3]) + ")")
    if values["list_shaped"]:
        reasons.append("answers with a list, as an assistant would")
    if values["encyclopedic"] >= 0.5:
        reasons.append("explains like an encyclopedia")
    if evidence.get("other_voice", 0) > 0 and evidence.get("nearest_voice"):
        reasons.append(f"closer to another voice ({evidence['nearest_voice']}) than to the character's own lines")
    elif values["emb_generic"] > values["emb_own"]:
        reasons.append("closer to a plain assistant than to the character's own lines")
    if values["style_confusion"] > 0 and evidence.get("nearest_style"):
        reasons.append(f"its style is nearer {evidence['nearest_style']} than the character's")
    if evidence.get("style_gaps"):
        reasons.append("unlike the character's lines in " + ", ".join(g.replace("_", " ") for g in evidence["style_gaps"]))
    return reasons


def facts(reply, probe, context: ScoringContext) -> dict:
    """Names, counts of years and likings in the reply that clash with the card's (a minor slip)."""
    text, _ = as_text(reply)
    if not text.strip():
        return _result()
    cache = context._style_cache
    if "facts" not in cache:
        cache["facts"] = CardFacts(context.fact_texts() + context.voice_texts(), context.user)
    question = " ".join(probe.turns[-1:]) if probe is not None else ""
    clashes = cache["facts"].clashes(text, question)
    return _result(MINOR if clashes else NONE, [f"against the card: {c}" for c in clashes])


def judge(reply, probe, context: ScoringContext) -> dict:
    """An optional judge model on any OpenAI-compatible endpoint ([audit] judge_url, judge_model)."""
    url = (context.config.get("judge_url") or "").rstrip("/")
    if not url:
        return _result()
    text, _ = as_text(reply)
    if not text.strip():
        return _result()
    import httpx

    character = context.character
    key = os.environ.get(context.config.get("judge_key_env", "PERSONAE_AUDIT_JUDGE_KEY"), "")
    prompt = (
        f"Character: {character.name}\nProfile: {character.render(character.description, context.user)}\n"
        f"Personality: {character.personality}\nExpected traits: {', '.join(_traits(character, probe))}\n\n"
        f"User: {probe.question if probe else ''}\nReply: {text[:4000]}\n\n"
        "Is the reply in character? Answer with JSON only: "
        '{"verdict": "aligned" | "minor" | "misaligned", "reason": "one sentence"}'
    )
    try:
        response = httpx.post(
            f"{url}/chat/completions",
            headers={"Authorization": f"Bearer {key}"} if key else {},
            json={"model": context.config.get("judge_model", "judge"), "temperature": 0,
                  "messages": [{"role": "user", "content": prompt}]},
            timeout=float(context.config.get("judge_timeout", 30)),
        )
        response.raise_for_status()
        content = response.json()["choices"][0]["message"]["content"]
        verdict = json.loads(content[content.index("{"): content.rindex("}") + 1])
    except Exception as error:  # a judge that is down must not stop an audit
        return _result(reasons=[], judge_error=f"{type(error).__name__}: {error}"[:200])
    label = verdict.get("verdict")
    penalty = {"aligned": NONE, "minor": MINOR, "misaligned": MAJOR}.get(label, NONE)
    reason = str(verdict.get("reason") or label)[:300]
    return _result(penalty, [f"judge: {reason}"] if penalty != NONE else [], judge=label)


def _traits(character, probe) -> list[str]:
    """The traits a reply should show: the probe's, else the card's."""
    return list(getattr(probe, "traits", None) or character_traits(character)) or ["(none listed)"]


BUILTIN_SCORERS = {"leakage": leakage, "rules": rules, "voice": voice, "facts": facts, "judge": judge}


def collect_scorers(pm=None) -> dict:
    """Every scorer from the register_scorers hook (the built-ins come from plugins.audit)."""
    scorers: dict = {}

    def register(name, scorer):
        scorers[name] = scorer

    if pm is not None:
        pm.hook.register_scorers(register=register)
    if not scorers:  # no plugin manager, or plugins.audit not loaded: the built-ins still score
        scorers.update(BUILTIN_SCORERS)
    return scorers

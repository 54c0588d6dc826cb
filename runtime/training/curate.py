"""Curation: one character's logged turns -> scrubbed, filtered, deduplicated chat examples."""

from __future__ import annotations

import hashlib
import json
import math
import re
import zlib
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from runtime.training.bootstrap_store import stored_dialogues
from runtime.training.config import TrainingConfig
from runtime.training.screen import screen, scoring_context
from runtime.training.scrub import scrub

# Rules in the order they are applied; `dropped` reports every one, zeros included.
# degenerate, unsafe, leakage and misaligned also come from the audit's screen of every reply (curate.screen).
RULES = ("swiped_away", "orphaned", "opted_out", "thumbs_down", "degenerate", "structured", "leakage", "unsafe",
         "misaligned", "empty", "duplicate", "user_cap")
LEAKAGE_TABLES = ("audit_verdicts", "audit_replies", "verdicts")


@dataclass
class CuratedDataset:
    """Chat-format training and validation examples of one character, and what curation removed."""

    character: str
    train: list[dict]
    validation: list[dict]
    dropped: dict
    scrubbed: dict = field(default_factory=dict)
    logged_turns: int = 0  # logged replies considered
    kept_turns: int = 0  # logged replies kept (before the split)
    card_examples: int = 0  # card example dialogues mixed into train (with repeats)
    bootstrap_examples: int = 0  # bootstrapped dialogues (personae bootstrap) in train and validation
    new_turns: int = 0  # kept turns newer than since_message_id
    last_message_id: int = 0  # newest kept reply: the data snapshot a version is trained on
    notes: list[str] = field(default_factory=list)

    @property
    def data_hash(self) -> str:
        """sha256 over the exact train and validation messages."""
        payload = json.dumps(
            {"train": [e["messages"] for e in self.train], "validation": [e["messages"] for e in self.validation]},
            sort_keys=True, ensure_ascii=False,
        )
        return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()

    def export(self, path: str | Path, split: str = "train") -> int:
        """Write one split ("train", "validation" or "all") as chat JSONL ({"messages": [...]}); return the count."""
        chosen = {"train": self.train, "validation": self.validation, "all": self.train + self.validation}[split]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            for example in chosen:
                handle.write(json.dumps({"messages": example["messages"]}, ensure_ascii=False) + "\n")
        return len(chosen)

    def to_dict(self) -> dict:
        """Everything, for the training worker's request file."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "CuratedDataset":
        return cls(**data)


# --- near-duplicates ----------------------------------------------------------------------

_PRIME = (1 << 61) - 1
_HASHES = [(1 + 2 * i * 0x9E3779B1, 7 + i * 0x85EBCA77) for i in range(16)]  # fixed: same result every run
_BANDS, _ROWS = 8, 2


def normalise(text: str) -> str:
    """Lower case, punctuation and extra spaces removed: what near-duplicates share."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def shingles(text: str, size: int = 3) -> set[str]:
    """Word n-grams of normalised text (the text itself when shorter)."""
    words = text.split()
    if len(words) <= size:
        return {text}
    return {" ".join(words[i:i + size]) for i in range(len(words) - size + 1)}


def _minhash(items: set[str]) -> list[int]:
    values = [zlib.crc32(item.encode()) for item in items]
    return [min((a * v + b) % _PRIME for v in values) for a, b in _HASHES]


class NearDuplicates:
    """MinHash LSH over word shingles, verified by exact Jaccard similarity."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.exact: set[str] = set()
        self.buckets: dict[tuple, list[int]] = defaultdict(list)
        self.sets: list[set[str]] = []

    def seen(self, text: str) -> bool:
        """Whether text nearly repeats one added before; if not, remember it."""
        key = normalise(text)
        if key in self.exact:
            return True
        items = shingles(key)
        signature = _minhash(items)
        bands = [(b, tuple(signature[b * _ROWS:(b + 1) * _ROWS])) for b in range(_BANDS)]
        for band in bands:
            for index in self.buckets.get(band, ()):
                other = self.sets[index]
                if len(items & other) / len(items | other) >= self.threshold:
                    return True
        self.exact.add(key)
        self.sets.append(items)
        for band in bands:
            self.buckets[band].append(len(self.sets) - 1)
        return False


# --- the log ------------------------------------------------------------------------------


def leakage_flags(store) -> tuple[set[int], str | None]:
    """Ids of replies an audit flagged for persona leakage, and where they came from (None: no audit data)."""
    flagged: set[int] = set()
    source = None
    tables = set(store.db.table_names())
    for name in LEAKAGE_TABLES:
        if name not in tables:
            continue
        columns = {c.name for c in store.db[name].columns}
        if "message_id" not in columns:
            continue
        conditions = []
        if "leakage" in columns:
            conditions.append("coalesce(leakage, 0) > 0")
        if "verdict" in columns:
            conditions.append("verdict = 'leakage'")
        if conditions:
            rows = store.query(f"select message_id from [{name}] where message_id is not null and ({' or '.join(conditions)})")
            flagged |= {row["message_id"] for row in rows}
            source = name
    return flagged, source


def _meta(row: dict) -> dict:
    try:
        return json.loads(row.get("meta") or "{}") or {}
    except ValueError:
        return {}


def _meta_leaks(meta: dict) -> bool:
    audit = meta.get("audit") if isinstance(meta.get("audit"), dict) else {}
    return bool(meta.get("leakage") or audit.get("leakage"))


def _stable_fraction(seed: int, key: str) -> float:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _scrubbed_messages(messages: list[dict], counts: Counter) -> list[dict]:
    clean = []
    for message in messages:
        text, found = scrub(message["content"])
        counts.update(found)
        clean.append({"role": message["role"], "content": text})
    return clean


def _screen_replies(replies, by_id, position, superseded, opted_out, feedback, flagged, character, settings, pm,
                    config, notes) -> dict:
    """{reply id: rule} for replies the audit's screen drops (those the cheaper rules keep are screened)."""
    degenerate = {r["id"]: "degenerate" for r in replies if _meta(r).get("finish_reason") == "degenerate"}
    if not config.audit_filter:
        notes.append("audit screen off (audit_filter = false): only replies marked degenerate while streaming "
                     "are dropped as degenerate")
        return degenerate
    items, ids = [], []
    for reply in replies:
        prompt = by_id.get(reply["reply_to"])
        if (reply["id"] in superseded or reply["id"] in degenerate or prompt is None or prompt["id"] not in position
                or prompt.get("user_id") in opted_out or reply["id"] in flagged
                or any(value < 0 for value in feedback.get(reply["id"], ()))
                or not (reply["text"] or "").strip()):
            continue
        items.append({"prompt": prompt["text"] or "", "reply": reply["text"]})
        ids.append(reply["id"])
    if not items:
        return degenerate
    catalog = None
    if pm is not None and settings is not None:
        from runtime.characters.catalog import Catalog

        catalog = Catalog(pm, settings.data_dir)  # the other voices the audit compares against
    outcomes = screen(items, scoring_context(character, settings, pm, catalog), pm=pm)
    return {**degenerate, **{i: o.rule for i, o in zip(ids, outcomes) if o.rule}}


def _screened_dialogues(rows, character, settings, pm, config, dropped: Counter) -> list[dict]:
    """Bootstrapped dialogues screened again (the rules may have changed since): each cut before its first bad reply."""
    if not rows or not config.audit_filter:
        return rows
    pairs = [(row, i) for row in rows for i, m in enumerate(row["messages"]) if m["role"] == "assistant" and i]
    items = [{"prompt": row["messages"][i - 1]["content"], "reply": row["messages"][i]["content"]} for row, i in pairs]
    outcomes = screen(items, scoring_context(character, settings, pm), pm=pm)
    cuts: dict[int, int] = {}
    for (row, index), outcome in zip(pairs, outcomes):
        if outcome.rule and index < cuts.get(row["id"], len(row["messages"])):
            cuts[row["id"]] = index
    kept = []
    for row in rows:
        cut = cuts.get(row["id"])
        if cut is None:
            kept.append(row)
            continue
        dropped[next(o.rule for (r, i), o in zip(pairs, outcomes) if r["id"] == row["id"] and i == cut)] += 1
        if cut > 1:  # the turns before the bad reply still stand
            kept.append({**row, "messages": row["messages"][:cut - 1]})
    return kept


def curate(store, character, settings=None, *, config: TrainingConfig | None = None, pm=None,
           since_message_id: int | None = None, user_name: str = "User") -> CuratedDataset:
    """Curate one character's (a Character's) training data from the log."""
    config = config or TrainingConfig.from_sources(getattr(settings, "training", None))
    dropped = Counter({rule: 0 for rule in RULES})
    scrubbed: Counter = Counter()
    notes: list[str] = []

    rows = store.query("select * from messages where character = ? order by id", [character.id])
    by_id = {row["id"]: row for row in rows}
    superseded = {row["swipe_of"] for row in rows if row.get("swipe_of")}
    opted_out = store.opted_out_users()
    feedback = defaultdict(list)
    for row in store.query(
        "select f.message_id, f.value from feedback f join messages m on m.id = f.message_id where m.character = ?",
        [character.id],
    ):
        feedback[row["message_id"]].append(row["value"])
    flagged, leakage_source = leakage_flags(store)
    if leakage_source is None:
        notes.append("leakage rule: no audit verdicts in the log yet, only replies whose meta flags leakage are dropped")
    conversations = defaultdict(list)
    for row in rows:
        if row["id"] not in superseded:
            conversations[row["conversation_id"]].append(row)
    position = {row["id"]: (row["conversation_id"], i) for cid, items in conversations.items()
                for i, row in enumerate(items)}

    system = character.system_text(user_name)
    candidates = []  # (reply row, user id, messages)
    replies = [row for row in rows if row["role"] == "assistant" and row.get("reply_to")]
    rejected = _screen_replies(replies, by_id, position, superseded, opted_out, feedback, flagged, character,
                               settings, pm, config, notes)
    for reply in replies:
        if reply["id"] in superseded:
            dropped["swiped_away"] += 1
            continue
        prompt = by_id.get(reply["reply_to"])
        if prompt is None or prompt["id"] not in position:
            dropped["orphaned"] += 1
            continue
        if prompt.get("user_id") in opted_out:
            dropped["opted_out"] += 1
            continue
        if any(value < 0 for value in feedback.get(reply["id"], ())):
            dropped["thumbs_down"] += 1
            continue
        if _meta(reply).get("finish_reason") == "degenerate":
            dropped["degenerate"] += 1
            continue
        if _meta(reply).get("structured"):  # JSON or a function call a client forced: not the character speaking
            dropped["structured"] += 1
            continue
        if reply["id"] in flagged or _meta_leaks(_meta(reply)):
            dropped["leakage"] += 1
            continue
        if not (reply["text"] or "").strip() or not (prompt["text"] or "").strip():
            dropped["empty"] += 1
            continue
        if reply["id"] in rejected:
            dropped[rejected[reply["id"]]] += 1
            continue
        conversation_id, index = position[prompt["id"]]
        context = conversations[conversation_id][max(0, index - config.context_messages):index]
        # Context stops at the newest message that may not be trained on: an opted-out user's (or a reply to
        # one), a 👎 reply, a leaky one. Such text must not ride along as context either.
        for cut in range(len(context) - 1, -1, -1):
            message = context[cut]
            answered = by_id.get(message.get("reply_to") or -1, {})
            if (message.get("user_id") in opted_out or answered.get("user_id") in opted_out
                    or any(value < 0 for value in feedback.get(message["id"], ()))
                    or message["id"] in flagged or _meta_leaks(_meta(message)) or message["id"] in rejected):
                context = context[cut + 1:]
                break
        messages = [{"role": m["role"], "content": m["text"]} for m in context if (m["text"] or "").strip()]
        messages += [{"role": "user", "content": prompt["text"]}, {"role": "assistant", "content": reply["text"]}]
        candidates.append((reply, prompt.get("user_id") or "", messages))

    # Near-duplicates: the newest copy survives (later text is the freshest style).
    detector = NearDuplicates(config.dedupe_threshold)
    unique = []
    for reply, user_id, messages in reversed(candidates):
        if detector.seen(messages[-2]["content"] + " \n " + messages[-1]["content"]):
            dropped["duplicate"] += 1
            continue
        unique.append((reply, user_id, messages))
    unique.reverse()

    # No single user may dominate: cap each user's share, keeping liked then newest turns.
    cap = max(config.user_cap_floor, math.ceil(config.max_user_share * len(unique)))
    by_user = defaultdict(list)
    for item in unique:
        by_user[item[1]].append(item)
    kept_ids = set()
    for user_id, items in by_user.items():
        ranked = sorted(items, key=lambda item: (sum(feedback.get(item[0]["id"], ())) > 0, item[0]["id"]), reverse=True)
        kept_ids |= {item[0]["id"] for item in ranked[:cap]}
        dropped["user_cap"] += max(0, len(items) - cap)
    kept = [item for item in unique if item[0]["id"] in kept_ids]

    logged = []
    for reply, user_id, messages in kept:
        logged.append({
            "messages": [{"role": "system", "content": system}, *_scrubbed_messages(messages, scrubbed)],
            "meta": {"source": "log", "message_id": reply["id"], "user_id": user_id,
                     "conversation_id": reply["conversation_id"], "train_on": "last"},
        })

    # The card's example dialogues keep the character anchored to its own voice.
    blocks = [block for block in character.example_dialogues(user_name) if any(m["role"] == "assistant" for m in block)]
    card = []
    for number, block in enumerate(blocks):
        while block and block[-1]["role"] != "assistant":
            block = block[:-1]
        card.append({"messages": [{"role": "system", "content": system}, *_scrubbed_messages(block, scrubbed)],
                     "meta": {"source": "card", "block": number, "train_on": "all"}})
    if not blocks:
        notes.append("the card has no example dialogues to mix in")

    # Bootstrapped dialogues (`personae bootstrap`): audited when written, kept apart from the users' log.
    boot = []
    if config.bootstrap:
        for row in _screened_dialogues(stored_dialogues(store, character.id), character, settings, pm, config,
                                       dropped):
            boot.append({"messages": [{"role": "system", "content": system},
                                      *_scrubbed_messages(row["messages"], scrubbed)],
                         "meta": {"source": "bootstrap", "dialogue_id": row["id"], "kind": row["kind"],
                                  "train_on": "all"}})

    examples = logged + boot + card
    if pm is not None:
        pm.hook.curate_examples(character=character, examples=examples)

    train, validation = [], []
    for example in examples:
        meta = example.setdefault("meta", {})
        key = f"{meta.get('source')}:{meta.get('message_id', meta.get('block', json.dumps(example['messages'])))}"
        meta["split_key"] = _stable_fraction(config.seed, key)
        if meta.get("source") == "card":
            train.append(example)
        elif meta["split_key"] < config.validation_share:
            validation.append(example)
        else:
            train.append(example)
    if not validation and len(train) >= 2 and config.validation_share > 0:
        # A validation set is needed for the gate: hold out the most "validation-like" example.
        pool = [e for e in train if e["meta"].get("source") != "card"] or train
        chosen = min(pool, key=lambda e: e["meta"]["split_key"])
        train.remove(chosen)
        validation.append(chosen)
    card_in_train = [e for e in train if e["meta"].get("source") == "card"]
    if card_in_train:
        logged_train = len(train) - len(card_in_train)
        wanted = math.ceil(config.example_share * logged_train / max(1e-9, 1 - config.example_share))
        copies = min(10, max(1, math.ceil(wanted / len(card_in_train))))
        train += [dict(e, meta={**e["meta"], "copy": c}) for c in range(1, copies) for e in card_in_train]
    for example in train + validation:
        example["meta"].pop("split_key", None)

    kept_logged = [e for e in examples if e.get("meta", {}).get("source") == "log"]
    ids = [e["meta"]["message_id"] for e in kept_logged]
    since = since_message_id or 0
    return CuratedDataset(
        character=character.id, train=train, validation=validation, dropped=dict(dropped),
        scrubbed=dict(scrubbed), logged_turns=len(replies), kept_turns=len(kept_logged),
        card_examples=sum(1 for e in train if e["meta"].get("source") == "card"),
        bootstrap_examples=sum(1 for e in train + validation if e["meta"].get("source") == "bootstrap"),
        new_turns=sum(1 for i in ids if i > since), last_message_id=max(ids, default=since), notes=notes,
    )

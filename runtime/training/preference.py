"""Preference data from the log: 👍/👎 on replies (KTO rows) and swipes (DPO pairs: kept over swiped away)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field

from runtime.training.bootstrap_store import bootstrap_pairs
from runtime.training.config import TrainingConfig, TrainingError
from runtime.training.scrub import scrub

# The stages and methods that need preference data, and which data each one reads.
NEEDS = {"kto": "ratings", "dpo": "swipes"}


class TooLittlePreference(TrainingError):
    """Too few 👍/👎 or swipes to train on; the message names the count and what to do."""


@dataclass
class PreferenceData:
    """One character's preference examples in TRL's conversational formats."""

    character: str
    kto: list[dict] = field(default_factory=list)  # {"prompt": [msgs], "completion": [assistant], "label": bool}
    dpo: list[dict] = field(default_factory=list)  # {"prompt": [msgs], "chosen": [assistant], "rejected": [...]}
    skipped: dict = field(default_factory=dict)
    from_bootstrap: int = 0  # DPO pairs from rejection sampling (`personae bootstrap`), after the swipe pairs

    @property
    def liked(self) -> int:
        return sum(1 for row in self.kto if row["label"])

    @property
    def disliked(self) -> int:
        return sum(1 for row in self.kto if not row["label"])

    @property
    def data_hash(self) -> str:
        """sha256 over the exact preference rows (a version's manifest records what it learned from)."""
        payload = json.dumps({"kto": self.kto, "dpo": self.dpo}, sort_keys=True, ensure_ascii=False)
        return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> "PreferenceData | None":
        return cls(**data) if data else None

    def require(self, kind: str, minimum: int) -> list[dict]:
        """The rows a KTO or DPO run trains on, or a clear error when there are too few."""
        if kind == "kto":
            if len(self.kto) < minimum or not self.liked or not self.disliked:
                raise TooLittlePreference(
                    f"{self.character}: only {len(self.kto)} rated replies ({self.liked} 👍, {self.disliked} 👎) are "
                    f"usable for KTO; it needs at least {minimum}, with both 👍 and 👎 among them: rate more replies "
                    "(the 👍/👎 buttons on Discord, POST /v1/feedback), or lower min_preference in [training]")
            return self.kto
        if len(self.dpo) < minimum:
            raise TooLittlePreference(
                f"{self.character}: only {len(self.dpo)} DPO pairs ({self.from_bootstrap} from bootstrapping, the rest "
                f"kept regenerations over replies swiped away) are usable, {minimum} needed: re-roll replies you don't "
                "like (/regen in the chat, the regenerate button on Discord, or n>1 on the HTTP API and continue from "
                "the one you keep), run `personae bootstrap NAME` (each kept reply over the worst candidate the audit "
                "turned down makes a pair), or lower min_preference in [training]")
        return self.dpo


def _meta(row: dict) -> dict:
    try:
        return json.loads(row.get("meta") or "{}") or {}
    except ValueError:
        return {}


def _clean(text: str, counts: Counter) -> str:
    cleaned, found = scrub(text or "")
    counts.update(found)
    return cleaned


def preference_data(store, character, config: TrainingConfig | None = None, *, user_name: str = "User"
                    ) -> PreferenceData:
    """KTO rows from feedback and DPO pairs from swipe chains of one character, from the real log."""
    config = config or TrainingConfig()
    skipped = Counter({"opted_out": 0, "tied_feedback": 0, "empty": 0, "same_text": 0, "disliked_kept": 0})
    scrubbed: Counter = Counter()
    rows = store.query("select * from messages where character = ? order by id", [character.id])
    by_id = {row["id"]: row for row in rows}
    superseded = {row["swipe_of"] for row in rows if row.get("swipe_of")}
    opted_out = store.opted_out_users()
    votes = defaultdict(int)
    for row in store.query("select f.message_id, f.value from feedback f join messages m on m.id = f.message_id "
                           "where m.character = ?", [character.id]):
        votes[row["message_id"]] += row["value"]
    conversation = defaultdict(list)  # the history a reader saw: superseded swipes left out
    for row in rows:
        if row["id"] not in superseded:
            conversation[row["conversation_id"]].append(row)
    system = {"role": "system", "content": character.system_text(user_name)}

    def prompt_of(asked: dict) -> list[dict] | None:
        if asked.get("user_id") in opted_out:
            return None
        earlier = [m for m in conversation[asked["conversation_id"]] if m["id"] < asked["id"]]
        earlier = earlier[-config.context_messages:] if config.context_messages else []
        for cut in range(len(earlier) - 1, -1, -1):  # an opted-out user's words never ride along as context
            answered = by_id.get(earlier[cut].get("reply_to") or -1, {})
            if earlier[cut].get("user_id") in opted_out or answered.get("user_id") in opted_out:
                earlier = earlier[cut + 1:]
                break
        history = [{"role": m["role"], "content": _clean(m["text"], scrubbed)} for m in earlier if (m["text"] or "").strip()]
        return [system, *history, {"role": "user", "content": _clean(asked["text"], scrubbed)}]

    def reply(row: dict) -> list[dict]:
        return [{"role": "assistant", "content": _clean(row["text"], scrubbed)}]

    kto = []
    for message_id, total in sorted(votes.items()):
        row = by_id.get(message_id)
        asked = by_id.get((row or {}).get("reply_to") or -1)
        if row is None or row["role"] != "assistant" or asked is None:
            continue
        if total == 0:
            skipped["tied_feedback"] += 1
            continue
        if not (row["text"] or "").strip():
            skipped["empty"] += 1
            continue
        prompt = prompt_of(asked)
        if prompt is None:
            skipped["opted_out"] += 1
            continue
        kto.append({"prompt": prompt, "completion": reply(row), "label": total > 0})

    versions = defaultdict(list)  # every logged version of the reply to one user message
    for row in rows:
        if row["role"] == "assistant" and row.get("reply_to"):
            versions[row["reply_to"]].append(row)
    dpo = []
    for asked_id, group in sorted(versions.items()):
        kept = [row for row in group if row["id"] not in superseded]
        dropped = [row for row in group if row["id"] in superseded]
        asked = by_id.get(asked_id)
        if len(kept) != 1 or not dropped or asked is None:
            continue
        chosen = kept[0]
        if votes.get(chosen["id"], 0) < 0:  # kept, but then thumbed down: not a preference for it
            skipped["disliked_kept"] += len(dropped)
            continue
        prompt = prompt_of(asked)
        if prompt is None:
            skipped["opted_out"] += len(dropped)
            continue
        for other in dropped:
            if votes.get(other["id"], 0) > 0:
                continue  # swiped away yet liked: no preference either way
            if not (chosen["text"] or "").strip() or not (other["text"] or "").strip():
                skipped["empty"] += 1
            elif chosen["text"].strip() == other["text"].strip():
                skipped["same_text"] += 1
            else:
                dpo.append({"prompt": prompt, "chosen": reply(chosen), "rejected": reply(other)})
    # Rejection sampling's pairs: the audit's choice over its worst rejection, on the card's own system prompt.
    boot = bootstrap_pairs(store, character.id, system["content"]) if config.bootstrap else []
    dpo += boot
    if scrubbed:
        skipped.update({f"scrubbed_{k}": v for k, v in scrubbed.items()})
    return PreferenceData(character.id, kto, dpo, dict(skipped), from_bootstrap=len(boot))

"""Coherence: scripted 10-turn chats with every built-in character on SmolLM2, through the real engine.

Each conversation is a fixed list of user turns (tests/bench/coherence_scripts.py, 20 scripts) with a fixed
seed per turn; every reply goes back into the history, as in `make chat`. The conversations of one
character are played side by side (one thread each, turn after turn), so the engine batches their
replies as it batches concurrent users; characters run one after another. A reply counts as degenerate when the guard stopped
it (finish_reason "degenerate") or when the detector (runtime.generation.guard.check_reply) finds a loop, a
word list or gibberish in the final text. Also counted: replies that repeat an earlier reply of the same chat
(copy_signal), replies the guard re-sampled (the first attempt thrown away before anyone saw it: the reply
is waited for, as the HTTP API and Discord without streaming do; a console that prints as it goes would
have shown the first attempt cut instead) and of those the ones rescued, and the persona audit's aligned share
of all replies, and of conversations 1-2 alone (the reduced runs before measured those two).

Variants (PERSONAE_COHERENCE_VARIANTS, comma-separated, default "now"): now (the defaults: min_p, guard
with the copy check, one re-sample that may not continue a copied reply), dry (now + the DRY penalty at
llama.cpp's usual 0.8), before (this runtime's sampling before issue 20: repetition penalty over the whole
prompt, no min_p / top_k, no guard), card (now, on the bare base with the card: no shipped weights), and card
with the prompt assembled another way (tests/bench/prompt_layouts.py: card-transcript, card-noexamples,
card-nopost, card-plain), all on the same prompts and seeds.

    PERSONAE_BENCH=1 python -m pytest tests/bench/test_bench_coherence.py -s   # the full 20 x 10 per character

PERSONAE_COHERENCE_CONVERSATIONS / _TURNS shrink it (a duration estimate), PERSONAE_COHERENCE_CHARACTERS=pixel,...
plays only those, PERSONAE_COHERENCE_TOGETHER=1 plays every character's chats at once (one batch; more memory); PERSONAE_COHERENCE_THREADS sets torch's threads (default 1: the machine is shared).
Cost, measured on a 2-core machine shared with other work (load 8-40): 20 chats x 2 turns of one character took
4.8 minutes (1 thread), so the full run is 1.5-3 hours there; 20 chats side by side held ~3.7 GB by turn 2
(the keys and values of 20 growing prompts, twice: the batch and the prefix cache), and two such processes
ran the shared machine out of memory. Seeded replies are reproducible alone; side by side, a batch's padding can move a logit by a rounding
error, so a rerun may differ in a few tokens.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_utils import report
from coherence_scripts import SCRIPTS
from prompt_layouts import LAYOUTS, prompt_layout

VARIANTS = {"now": {}, "dry": {"dry_multiplier": 0.8},
            "before": {"min_p": 0, "top_k": 0, "repeat_last_n": -1, "guard": False},  # sampling before issue 20
            "card": {},  # today's sampling on the bare base with the card: what the shipped weights are measured against
            **{layout: {} for layout in LAYOUTS}}  # card, with the prompt assembled another way (prompt_layouts.py)
CARD_ONLY = {"card", *LAYOUTS}  # variants served without the character's weights (version "base")
# Read at import: the tests' isolated environment clears PERSONAE_* variables before a test runs.
CONVERSATIONS = int(os.environ.get("PERSONAE_COHERENCE_CONVERSATIONS", "20"))
TURNS = int(os.environ.get("PERSONAE_COHERENCE_TURNS", "10"))
CHOSEN = os.environ.get("PERSONAE_COHERENCE_VARIANTS", "now").split(",")
ONLY = [c for c in os.environ.get("PERSONAE_COHERENCE_CHARACTERS", "").split(",") if c]  # default: every one
SIZE = "_".join(["coherence", *CHOSEN, f"{CONVERSATIONS}x{TURNS}"])  # the run's name: results, plot
NAME = "_".join([SIZE, *ONLY])  # this process's transcripts and results
THREADS = int(os.environ.get("PERSONAE_COHERENCE_THREADS", "1"))  # torch threads
TOGETHER = os.environ.get("PERSONAE_COHERENCE_TOGETHER") == "1"  # every character's chats side by side too
BUILT_IN = ("captain-mara-voss", "pixel", "professor-quill")
COMPARED = 2  # conversations scored alone too: the reduced runs' figures (README) are on these


def converse(engine, character, variant: str, number: int) -> list[dict]:
    """Every reply of scripted chat `number` with one character, turn after turn."""
    from runtime.chat.engine import Turn

    replies = []
    channel = f"coherence-{character.id}-{number}-{variant}"
    for index, text in enumerate(SCRIPTS[number % len(SCRIPTS)][:TURNS]):
        sampling = {"seed": 1000 * number + index + 17, **VARIANTS[variant]}
        turn = Turn(platform="bench", channel=channel, user_id="bench", text=text, character=character,
                    sampling=sampling, **({"version": "base"} if variant in CARD_ONLY else {}))
        if index == 0:
            engine.log_greeting(turn, character)
        reply = engine.reply(turn)
        reply.result()
        replies.append({"character": character.id, "conversation": number, "turn": index, "user": text,
                        "text": reply.text, "finish_reason": reply.stream.finish_reason,
                        "guard": reply.stream.degenerate, "resampled": reply.stream.resampled})
        print(f"[{character.id} c{number} t{index}] {reply.stream.finish_reason}: {reply.text[:100]!r}", flush=True)
    return replies


def play(engine, character, variant: str, conversations: int) -> list[dict]:
    """Every reply of `conversations` scripted chats with one character, the chats side by side."""
    with prompt_layout(LAYOUTS.get(variant), character.name), ThreadPoolExecutor(max_workers=conversations) as pool:
        chats = list(pool.map(lambda number: converse(engine, character, variant, number), range(conversations)))
    return [reply for chat in chats for reply in chat]


def judge(replies: list[dict]) -> dict:
    """Counts of degenerate, copied, re-sampled and rescued replies by the documented detector."""
    from runtime.generation.guard import check_reply, copy_signal

    degenerate = copies = resampled = rescued = 0
    for i, reply in enumerate(replies):
        reply["detector"] = check_reply(reply["text"]).reason
        reply["degenerate"] = reply["finish_reason"] == "degenerate" or bool(reply["detector"])
        degenerate += reply["degenerate"]
        resampled += bool(reply["resampled"])
        rescued += bool(reply["resampled"]) and not reply["degenerate"]
        earlier = [r["text"] for r in replies[:i] if r["conversation"] == reply["conversation"]
                   and r["character"] == reply["character"]]
        reply["copy"] = copy_signal(reply["text"], earlier)
        copies += bool(reply["copy"])
    return {"replies": len(replies), "degenerate": degenerate, "copies": copies, "resampled": resampled,
            "rescued": rescued}


def audit(engine, replies: list[dict]) -> None:
    """The persona audit's verdict and leakage on every reply (scored without generation), recorded on the reply."""
    from runtime.audit import score_replies

    for character_id in sorted({r["character"] for r in replies}):
        mine = [r for r in replies if r["character"] == character_id]
        rows = [{"prompt": r["user"], "reply": r["text"], "turn": r["turn"] + 1} for r in mine]
        for reply, verdict in zip(mine, score_replies(engine.catalog.get(character_id), rows)):
            reply["verdict"], reply["leakage"] = verdict["verdict"], bool(verdict.get("leakage"))


def share(replies: list[dict], aligned: bool = True) -> float:
    """The share of audited replies that are aligned (or, aligned=False, that leak the base model's identity)."""
    hits = (r["verdict"] == "aligned" if aligned else r["leakage"] for r in replies)
    return sum(hits) / max(len(replies), 1)


def merged(out: Path) -> dict:
    """Every character's results of this run size and variants, from each process's results file."""
    results = {}
    for path in sorted(out.glob(f"{SIZE}_*_results.json")):
        if not path.name.endswith("_partial_results.json"):  # a stopped run's figures (no minutes), not a finished one's
            results.update(json.loads(path.read_text()))
    (out / f"{SIZE}_results.json").write_text(json.dumps(results, indent=1))
    return results


def plot(results: dict, path: Path, variants: list[str] = CHOSEN) -> Path:
    """Degenerate and audit-aligned shares per character, one bar per variant."""
    from runtime.plots import pyplot, save

    fig, axes = pyplot().subplots(1, 2, figsize=(9, 3.4))
    names = list(results)
    width = 0.8 / len(variants)
    for axis, (key, label) in zip(axes, [("degenerate", "% degenerate replies"), ("aligned", "% audit-aligned replies")]):
        for k, variant in enumerate(variants):
            shares = [100 * (results[n][variant]["aligned"] if key == "aligned" else
                             results[n][variant]["degenerate"] / max(results[n][variant]["replies"], 1)) for n in names]
            bars = axis.bar([i + (k - (len(variants) - 1) / 2) * width for i in range(len(names))], shares, width,
                            label=variant)
            axis.bar_label(bars, fmt="%.0f")
        axis.set_xticks(range(len(names)), [n.replace("-", "\n", 1) for n in names])
        axis.set_ylabel(label)
        axis.set_ylim(0, 100)
    axes[0].set_title(f"{CONVERSATIONS} chats x {TURNS} turns per character")
    axes[1].set_title("SmolLM2-135M, seeded")
    if len(variants) > 1:
        axes[0].legend()
    fig.tight_layout()
    return save(fig, path)


def test_bench_coherence(real_base, make_engine):
    assert not (TOGETHER and set(CHOSEN) & set(LAYOUTS)), "a prompt layout is patched per character: not TOGETHER"
    rows_at_once = CONVERSATIONS * (len(ONLY or BUILT_IN) if TOGETHER else 1)
    engine = make_engine(real_base, max_new_tokens=80, threads=THREADS, max_batch=max(rows_at_once, 1),
                         prefix_cache_mb=64 * max(rows_at_once, 4))  # each chat's last prompt stays cached
    characters = [c for c in engine.catalog.characters.values() if not ONLY or c.id in ONLY]
    engine.generator  # started before the clock
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    results, transcripts, started = {c.id: {} for c in characters}, [], time.perf_counter()
    for variant in CHOSEN:
        for group in ([characters] if TOGETHER else [[c] for c in characters]):
            began = time.perf_counter()
            with ThreadPoolExecutor(max_workers=len(group)) as pool:
                played = list(pool.map(lambda c: play(engine, c, variant, CONVERSATIONS), group))
            minutes = (time.perf_counter() - began) / 60  # together: the whole group's time
            for character, replies in zip(group, played):
                audit(engine, replies)  # once: the first conversations' share reads the same verdicts
                first = [r for r in replies if r["conversation"] < COMPARED]
                results[character.id][variant] = {**judge(replies), "aligned": share(replies),
                                                  "aligned_first": share(first), "minutes": minutes,
                                                  "leakage": share(replies, aligned=False)}
                transcripts += [{"sampling": variant, **r} for r in replies]
            # written after every group, so a run stopped part way keeps what it played
            (out / f"{NAME}_transcripts.json").write_text(json.dumps(transcripts, indent=1))
    (out / f"{NAME}_results.json").write_text(json.dumps(results, indent=1))
    if ONLY:  # characters played in separate processes: their results together, under the run's common name
        results = merged(out)
    picture = plot(results, out / f"{SIZE}.png")
    rows, order = [], " / ".join(CHOSEN)
    for name, r in results.items():
        rows.append({"metric": f"{name}: degenerate replies {order}", "target": "0 now",
                     "value": " / ".join(f"{r[v]['degenerate']}/{r[v]['replies']}" for v in CHOSEN)})
        rows.append({"metric": f"{name}: re-sampled by the guard (rescued) {order}",
                     "value": " / ".join(f"{r[v]['resampled']} ({r[v]['rescued']})" for v in CHOSEN)})
        rows.append({"metric": f"{name}: replies copying an earlier one {order}",
                     "value": " / ".join(str(r[v]["copies"]) for v in CHOSEN)})
        rows.append({"metric": f"{name}: audit aligned share {order}", "target": "not lower",
                     "value": " / ".join(f"{r[v]['aligned']:.0%}" for v in CHOSEN)})
        rows.append({"metric": f"{name}: audit leakage share {order}",
                     "value": " / ".join("not recorded" if r[v].get("leakage") is None else f"{r[v]['leakage']:.1%}"
                                         for v in CHOSEN)})  # a results file from before the column
        rows.append({"metric": f"{name}: audit aligned share, conversations 1-{COMPARED} alone {order}",
                     "value": " / ".join(f"{r[v]['aligned_first']:.0%}" for v in CHOSEN)})
        rows.append({"metric": f"{name}: minutes {order}",
                     "value": " / ".join(f"{r[v]['minutes']:.1f}" for v in CHOSEN)})
    rows.append({"metric": "conversations per character x turns", "value": f"{CONVERSATIONS} x {TURNS}"})
    rows.append({"metric": "minutes (this process)", "value": round((time.perf_counter() - started) / 60, 1)})
    rows.append({"metric": "plot", "value": str(picture)})
    report(SIZE if ONLY else NAME, rows)
    (out / f"{NAME}_transcripts.json").write_text(json.dumps(transcripts, indent=1))  # with the verdicts
    assert results and all(r[v]["replies"] == CONVERSATIONS * TURNS for r in results.values() for v in CHOSEN)


def from_log(database: Path) -> list[dict]:
    """The replies a bench run logged so far, read from its SQLite log (a run stopped part way, or still going)."""
    import sqlite3

    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    connection.row_factory = sqlite3.Row
    asked = {row["id"]: row["text"] for row in connection.execute("select id, text from messages where role = 'user'")}
    replies, turns = [], {}
    for row in connection.execute("select * from messages where role = 'assistant' and reply_to is not null "
                                  "and channel like 'coherence-%' order by id"):
        _, rest = row["channel"].split("-", 1)
        character, number, variant = rest.rsplit("-", 2)
        meta = json.loads(row["meta"] or "{}")
        key = (character, int(number), variant)
        turns[key] = turns.get(key, -1) + 1
        replies.append({"sampling": variant, "character": character, "conversation": int(number),
                        "turn": turns[key], "user": asked.get(row["reply_to"], ""), "text": row["text"],
                        "finish_reason": meta.get("finish_reason"), "guard": meta.get("degenerate"),
                        "resampled": meta.get("resampled")})
    return sorted(replies, key=lambda r: (r["character"], r["sampling"], r["conversation"], r["turn"]))


def partial(databases: list[str]) -> dict:
    """Judge and score the replies in bench logs; writes {SIZE}_partial_transcripts.json, _results.json and .png."""
    import tempfile

    from runtime.characters.catalog import Catalog
    from runtime.plugins import get_plugin_manager

    class Scored:  # what audit needs of an engine: the built-in characters
        catalog = Catalog(get_plugin_manager(), tempfile.mkdtemp())

    replies = [r for database in databases for r in from_log(Path(database))]
    results = {}
    for character in sorted({r["character"] for r in replies}):
        mine = [r for r in replies if r["character"] == character]
        audit(Scored, mine)
        first = [r for r in mine if r["conversation"] < COMPARED]
        results[character] = {"now": {**judge(mine), "aligned": share(mine), "aligned_first": share(first),
                                      "leakage": share(mine, aligned=False),
                                      "complete_turns": min(sum(r["conversation"] == n for r in mine)
                                                            for n in {r["conversation"] for r in mine})}}
    out = Path(__file__).parent / "results"
    (out / f"{SIZE}_partial_transcripts.json").write_text(json.dumps(replies, indent=1))
    (out / f"{SIZE}_partial_results.json").write_text(json.dumps(results, indent=1))
    plot(results, out / f"{SIZE}_partial.png")
    return results


if __name__ == "__main__":  # python tests/bench/test_bench_coherence.py LOG.db ...: a stopped run's figures
    import sys

    print(json.dumps(partial(sys.argv[1:]), indent=1))

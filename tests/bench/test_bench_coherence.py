"""Coherence: scripted multi-turn chats with every built-in character on SmolLM2, through the real engine.

Each conversation is a fixed list of user turns with a fixed seed per turn; every reply goes back into
the history, as in `make chat`. A reply counts as degenerate when the guard stopped it (finish_reason
"degenerate") or when the detector (runtime.generation.guard.check_reply) finds a loop, a word list or
gibberish in the final text. Also counted: replies that repeat an earlier reply of the same chat
(copy_signal), replies the guard re-sampled (the first attempt thrown away before anyone saw it: the
reply is waited for, as the HTTP API and Discord without streaming do; a console that prints as it goes
would have shown the first attempt cut instead), and the persona audit's aligned share of all replies.

Variants (PERSONAE_COHERENCE_VARIANTS, comma-separated; the first is "now"): now (the defaults: min_p,
guard with the copy check, one re-sample), dry (now + the DRY penalty at llama.cpp's usual 0.8),
before (this runtime's sampling before issue 20: repetition penalty over the whole prompt, no min_p /
top_k, no guard), all on the same prompts and seeds.

    PERSONAE_BENCH=1 PERSONAE_COHERENCE_CONVERSATIONS=20 python -m pytest tests/bench/test_bench_coherence.py -s

PERSONAE_COHERENCE_CHARACTERS=pixel,... plays only those (one process per character runs them side by side).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from bench_utils import report

TURNS = [
    ["Hi! Who are you?", "What do you do all day?", "That sounds fun. Can you tell me a story?", "What happened next?",
     "What's your biggest fear?", "Why does that scare you?", "What do you do to feel brave?",
     "Do you have any friends?", "Tell me something that would make me laugh.", "Thanks, goodnight!"],
    ["I'm feeling a bit down today.", "Work has been really stressful lately.", "Do you have any advice for me?",
     "I'll try that. What do you do when you're sad?", "Do you have any friends?", "What are they like?",
     "Tell me something that would make me laugh.", "Ha! Tell me another one.", "What should I do tonight?",
     "Thanks, I feel better."],
    ["Where do you live?", "Describe it for me.", "What's the best thing that ever happened there?", "And the worst?",
     "If you could go anywhere, where would you go?", "Why there?", "What would you bring with you?",
     "Who would you take along?", "What would you do first?", "Sounds great. Bye!"],
    ["Can you help me plan my weekend?", "I like hiking and reading.", "What book should I read?", "Why that one?",
     "What's your favourite food?", "How do you make it?", "Is it hard?", "What goes with it?",
     "Would you cook it for me?", "Okay, see you later!"],
]
VARIANTS = {"now": {}, "dry": {"dry_multiplier": 0.8},
            "before": {"min_p": 0, "top_k": 0, "repeat_last_n": -1, "guard": False}}  # sampling before issue 20
# Read at import: the tests' isolated environment clears PERSONAE_* variables before a test runs.
CONVERSATIONS = int(os.environ.get("PERSONAE_COHERENCE_CONVERSATIONS", "4"))
CHOSEN = os.environ.get("PERSONAE_COHERENCE_VARIANTS", "now,before").split(",")
ONLY = [c for c in os.environ.get("PERSONAE_COHERENCE_CHARACTERS", "").split(",") if c]  # default: every one
NAME = "_".join(["coherence", *([] if CHOSEN == ["now", "before"] else CHOSEN), *ONLY])
THREADS = int(os.environ.get("PERSONAE_COHERENCE_THREADS", "0"))  # torch threads; 0 = torch's default


def play(engine, character, variant: str, conversations: int) -> list[dict]:
    """Every reply of `conversations` scripted chats with one character."""
    from runtime.chat.engine import Turn

    replies = []
    for number in range(conversations):
        turns = TURNS[number % len(TURNS)]
        channel = f"coherence-{character.id}-{number}-{variant}"
        for index, text in enumerate(turns):
            sampling = {"seed": 1000 * number + index + 17, **VARIANTS[variant]}
            turn = Turn(platform="bench", channel=channel, user_id="bench", text=text, character=character,
                        sampling=sampling)
            if index == 0:
                engine.log_greeting(turn, character)
            reply = engine.reply(turn)
            reply.result()
            replies.append({"character": character.id, "conversation": number, "turn": index, "user": text,
                            "text": reply.text, "finish_reason": reply.stream.finish_reason,
                            "guard": reply.stream.degenerate, "resampled": reply.stream.resampled})
            print(f"[{character.id} c{number} t{index}] {reply.stream.finish_reason}: {reply.text[:100]!r}",
                  flush=True)
    return replies


def judge(replies: list[dict]) -> dict:
    """Counts of degenerate and copied replies by the documented detector."""
    from runtime.generation.guard import check_reply, copy_signal

    degenerate = copies = resampled = 0
    for i, reply in enumerate(replies):
        resampled += bool(reply["resampled"])
        reply["detector"] = check_reply(reply["text"]).reason
        reply["degenerate"] = reply["finish_reason"] == "degenerate" or bool(reply["detector"])
        degenerate += reply["degenerate"]
        earlier = [r["text"] for r in replies[:i] if r["conversation"] == reply["conversation"]
                   and r["character"] == reply["character"]]
        reply["copy"] = copy_signal(reply["text"], earlier)
        copies += bool(reply["copy"])
    return {"replies": len(replies), "degenerate": degenerate, "copies": copies, "resampled": resampled}


def aligned_share(engine, replies: list[dict]) -> float:
    """The persona audit's aligned share over every reply (scored without generation)."""
    from runtime.audit import score_replies

    verdicts = []
    for character_id in sorted({r["character"] for r in replies}):
        rows = [{"prompt": r["user"], "reply": r["text"], "turn": r["turn"] + 1} for r in replies
                if r["character"] == character_id]
        verdicts += score_replies(engine.catalog.get(character_id), rows)
    return sum(v["verdict"] == "aligned" for v in verdicts) / max(len(verdicts), 1)


def plot(results: dict, path: Path) -> Path:
    from runtime.plots import pyplot, save

    fig, axis = pyplot().subplots(figsize=(7, 3.2))
    names = list(results)
    width = 0.8 / len(CHOSEN)
    for k, key in enumerate(CHOSEN):
        shares = [100 * results[n][key]["degenerate"] / max(results[n][key]["replies"], 1) for n in names]
        axis.bar([i + (k - (len(CHOSEN) - 1) / 2) * width for i in range(len(names))], shares, width, label=key)
    axis.set_xticks(range(len(names)), names)
    axis.set_ylabel("% degenerate replies")
    axis.set_title("Scripted 10-turn chats on SmolLM2-135M")
    axis.legend()
    return save(fig, path)


def test_bench_coherence(real_base, make_engine):
    conversations = CONVERSATIONS
    engine = make_engine(real_base, max_new_tokens=80, threads=THREADS)
    engine.generator  # started before the clock
    results, transcripts, started = {}, [], time.perf_counter()
    for character in engine.catalog.characters.values():
        if ONLY and character.id not in ONLY:
            continue
        results[character.id] = {}
        for variant in CHOSEN:
            replies = play(engine, character, variant, conversations)
            results[character.id][variant] = {**judge(replies), "aligned": aligned_share(engine, replies)}
            transcripts += [{"sampling": variant, **r} for r in replies]
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / f"{NAME}_transcripts.json").write_text(json.dumps(transcripts, indent=1))
    picture = plot(results, out / f"{NAME}.png")
    rows, order = [], " / ".join(CHOSEN)
    for name, r in results.items():
        rows.append({"metric": f"{name}: degenerate replies {order}", "target": "0 now",
                     "value": " / ".join(f"{r[v]['degenerate']}/{r[v]['replies']}" for v in CHOSEN)})
        rows.append({"metric": f"{name}: re-sampled by the guard {order}",
                     "value": " / ".join(str(r[v]["resampled"]) for v in CHOSEN)})
        rows.append({"metric": f"{name}: replies copying an earlier one {order}",
                     "value": " / ".join(str(r[v]["copies"]) for v in CHOSEN)})
        rows.append({"metric": f"{name}: audit aligned share {order}", "target": "not lower",
                     "value": " / ".join(f"{r[v]['aligned']:.0%}" for v in CHOSEN)})
    rows.append({"metric": "conversations per character x turns", "value": f"{conversations} x {len(TURNS[0])}"})
    rows.append({"metric": "minutes", "value": round((time.perf_counter() - started) / 60, 1)})
    rows.append({"metric": "plot", "value": str(picture)})
    report(NAME, rows)
    assert all(r[v]["replies"] == conversations * len(TURNS[0]) for r in results.values() for v in CHOSEN)

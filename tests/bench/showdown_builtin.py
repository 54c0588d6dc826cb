"""The README's showdown on SmolLM2 for a built-in character, on its written dialogues, with real swipes for DPO.

Run: PYTHONPATH=. .venv/bin/python tests/bench/showdown_builtin.py CHARACTER DATA_DIR [--limit 16] [--threads 2]
     [--epochs 2 | --max-steps N] [--preference-max-steps N] [--max-length 384]

Data, the same for every method: the character's written dialogues (plugins/characters/cards/dialogues/<id>.json).
The first `--swipes` dialogues' opening exchange is logged as a chat in which the prompted SmolLM2's real reply
(the base with the full card, never the shipped weights) was swiped away for the written one, so DPO has real
pairs; the other dialogues are imported as a bootstrap source (`personae bootstrap --from`, screened by the
audit). The audit probes are never training turns (the import cuts them; the swiped turns are checked).
The shipped weights (version 1, adopted on first use) are audited on the same probes as a sixth column.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

WRITTEN = Path(__file__).resolve().parents[2] / "plugins" / "characters" / "cards" / "dialogues"


def opening_exchanges(dialogues: list[dict], character) -> list[tuple[str, str]]:
    """Each dialogue's first user turn and written reply; none may be an audit probe question."""
    from runtime.training.bootstrap_bank import normalise_turn, probe_questions

    probes = probe_questions(character)
    pairs = [(d["messages"][0]["content"], d["messages"][1]["content"]) for d in dialogues]
    clash = [question for question, _ in pairs if normalise_turn(question) in probes]
    assert not clash, f"training turns that are audit probes: {clash}"
    return pairs


def log_swipes(engine, character, pairs: list[tuple[str, str]], batch: int = 8) -> int:
    """Each turn: the prompted base model's real reply, swiped away for the written one (a swipe the user kept)."""
    from runtime.chat.engine import Turn

    for start in range(0, len(pairs), batch):
        started = []
        for index in range(start, min(start + batch, len(pairs))):
            question, answer = pairs[index]
            turn = Turn(platform="script", channel=f"chat-{index}", user_id=f"user{index % 4}", user_name="User",
                        text=question, character=character, version="base",
                        sampling={"max_new_tokens": 64, "seed": index + 1})
            started.append((turn, answer, engine.reply(turn)))
        for turn, answer, reply in started:
            reply.result()
            generated = reply.message
            engine.store.log_message(conversation_id=generated["conversation_id"], role="assistant", text=answer,
                                     character=character.id, platform="script", channel=turn.channel,
                                     reply_to=generated["reply_to"], swipe_of=generated["id"],
                                     weights_version="written")
    return len(pairs)


def round_robin(probes: list, limit: int) -> list:
    """The first `limit` probes taking each kind in turn (identity, style, out-of-character, injection, ...)."""
    by_kind: dict = {}
    for probe in probes:
        by_kind.setdefault(probe.kind, []).append(probe)
    rounds = max(len(group) for group in by_kind.values())
    return [group[i] for i in range(rounds) for group in by_kind.values() if i < len(group)][:limit]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("character")
    parser.add_argument("data_dir")
    parser.add_argument("--limit", type=int, default=16, help="single-turn audit probes per method")
    parser.add_argument("--methods", default="prompt,lora,hybrid,full,lora+dpo")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--max-steps", type=int, default=-1, help="optimiser steps per method (-1: the epochs)")
    parser.add_argument("--max-length", type=int, default=384, help="tokens per training example (left-cut)")
    parser.add_argument("--preference-max-steps", type=int, default=0,
                        help="optimiser steps of a preference stage (0: as --max-steps)")
    parser.add_argument("--swipes", type=int, default=40, help="written openings logged as swipes (DPO pairs)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, serving and training")
    args = parser.parse_args()
    os.environ["PERSONAE_DATA_DIR"] = args.data_dir
    import torch

    torch.set_num_threads(args.threads)
    from runtime.audit.probes import probe_set
    from runtime.audit.runner import run_audit
    from runtime.chat.build import build_engine
    from runtime.config import load_settings
    from runtime.training.showdown import parse_methods, showdown
    from runtime.training.written import import_written

    clock = time.perf_counter()
    engine = build_engine(load_settings({"threads": args.threads}))
    character = engine.catalog.get(args.character)
    dialogues = json.loads((WRITTEN / f"{character.id}.json").read_text())
    if not engine.store.query("select 1 from messages where platform = 'script' limit 1"):
        pairs = opening_exchanges(dialogues[:args.swipes], character)
        print(f"logged {log_swipes(engine, character, pairs)} written openings as swipes", file=sys.stderr)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as rest:
            json.dump(dialogues[args.swipes:], rest)
        imported = import_written(engine, character.id, rest.name)
        os.unlink(rest.name)
        print(f"imported {imported.dialogues} written dialogues ({imported.replies} replies), dropped "
              f"{imported.dropped}", file=sys.stderr)
    prepared = time.perf_counter()
    probes = round_robin([p for p in probe_set(character) if p.kind != "drift"], args.limit)
    # Batch 2 x 2 accumulation, as the shipped weights were made (plugins/characters/make_weights.py). Nice 0: the
    # showdown times its training; scheduled training's nice 10 would hand the CPU to anything else running.
    outcome = showdown(engine, character.id, parse_methods(args.methods), probes=probes,
                       train_config={"epochs": args.epochs, "max_steps": args.max_steps, "max_length": args.max_length,
                                     "preference_max_steps": args.preference_max_steps, "min_preference": 8,
                                     "batch_size": 2, "grad_accum": 2, "threads": args.threads,
                                     "subprocess_threads": args.threads, "nice": 0})
    finished = time.perf_counter()
    shipped = run_audit(engine, character.id, 1, probes=probes, progress=True) \
        if engine.registry.versions(character.id) else None
    print(json.dumps({"character": character.id, "rows": outcome["rows"], "plot": str(outcome["plot"]),
                      "shipped_v1": shipped and {"aligned": shipped.aligned, "minor": shipped.minor,
                                                 "misaligned": shipped.misaligned, "leakage": shipped.leakage},
                      "prepare_seconds": round(prepared - clock, 1),
                      "showdown_seconds": round(finished - prepared, 1),
                      "total_seconds": round(finished - clock, 1), "load": os.getloadavg()},
                     indent=1, default=str))
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

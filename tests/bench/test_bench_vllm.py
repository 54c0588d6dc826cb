"""Personae on vLLM against the same vLLM server called directly: same prompts (token ids), same settings.

Ratios only (the machine is shared): tokens/s of 8 concurrent chats (target >= 0.9x of direct) and
the p50 time to first token of a lone chat (target <= 1.1x direct + 50 ms). One real vLLM CPU server
(`make vllm`) on SmolLM2 with two LoRA characters. Saved to tests/bench/results/vllm.json.
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from bench_utils import report

sys.path.insert(0, str(Path(__file__).parent.parent))
from helpers_adapters import train_tiny_lora  # noqa: E402
from helpers_vllm import load_lora, start_server  # noqa: E402

from runtime.chat.engine import Turn  # noqa: E402

CHATS = 8
TOKENS = 64
QUESTIONS = ["Tell me about your ship.", "What is your favourite book?", "Describe a storm at sea.",
             "What did you eat today?", "Who is your best friend?", "What scares you most?",
             "Give me advice for a long journey.", "Where were you born?"]


def direct_stream(url, model, request, out, index):
    """One streamed completion straight to vLLM: (seconds to first text, tokens, finished at)."""
    s = request.sampling
    body = {"model": model, "prompt": list(request.input_ids), "max_tokens": s.max_new_tokens, "stream": True,
            "temperature": s.temperature, "top_p": s.top_p, "repetition_penalty": s.repetition_penalty,
            "stop": list(s.stop), "stream_options": {"include_usage": True}}
    started, first, tokens, text = time.perf_counter(), None, 0, ""
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=600) as response:
        for line in response.iter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            chunk = json.loads(line[5:])
            for choice in chunk.get("choices") or []:
                if choice.get("text"):
                    first = first or time.perf_counter()
                    text += choice["text"]
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    out[index] = (first - started, tokens, time.perf_counter(), text)


def personae_chat(engine, character, channel, question, out, index):
    started = time.perf_counter()
    reply = engine.reply(Turn(platform="bench", channel=channel, user_id=channel, user_name="Ann", text=question,
                              character=engine.catalog.get(character),
                              sampling={"temperature": 0, "max_new_tokens": TOKENS}))
    first = None
    for _ in reply:
        first = first or time.perf_counter()
    out[index] = (first - started, reply.stream.completion_tokens, time.perf_counter(), reply)


def concurrent(target, jobs):
    out = [None] * len(jobs)
    threads = [threading.Thread(target=target, args=(*job, out, i)) for i, job in enumerate(jobs)]
    started = time.perf_counter()
    [t.start() for t in threads]
    [t.join() for t in threads]
    return out, sum(r[1] for r in out) / (max(r[2] for r in out) - started)


@pytest.mark.real_model
def test_personae_on_vllm_against_vllm_direct(make_engine, real_base, smollm2_folder, tmp_path):
    server = start_server(smollm2_folder, tmp_path / "logs")
    try:
        engine = make_engine(real_base, backend="vllm", plugins={"vllm": {"urls": [server.url]}})
        characters = ("pixel", "professor-quill")
        for seed, character in enumerate(characters):
            folder = train_tiny_lora(real_base, tmp_path / character, steps=1, seed=seed,
                                     target_modules=("q_proj", "k_proj", "v_proj", "o_proj"))
            engine.weights.registry.add(folder, character, activate=True)
            load_lora(server.url, f"direct-{character}", folder)
        jobs = [(engine, characters[i % 2], f"c{i}", QUESTIONS[i]) for i in range(CHATS)]
        personae_chat(engine, "pixel", "warm", "Hello!", [None], 0)  # adapters loaded, paths warm
        rounds = {"personae": [], "direct": []}
        ttft = {"personae": [], "direct": []}
        for _ in range(2):  # interleaved, best of 2 on both sides
            out, rate = concurrent(personae_chat, jobs)
            rounds["personae"].append(rate)
            requests = [(server.url, f"direct-{characters[i % 2]}", out[i][3].stream.request) for i in range(CHATS)]
            direct, rate = concurrent(direct_stream, requests)
            rounds["direct"].append(rate)
            assert [d[3] for d in direct] == [o[3].stream.text for o in out]  # the same replies
            for i in range(3):
                one = [None]
                personae_chat(engine, "pixel", f"lone{i}", QUESTIONS[i], one, 0)
                ttft["personae"].append(one[0][0])
                direct_stream(server.url, "direct-pixel", one[0][3].stream.request, one, 0)
                ttft["direct"].append(one[0][0])
        tps = max(rounds["personae"]) / max(rounds["direct"])
        p50 = {k: statistics.median(v) for k, v in ttft.items()}
        report("vllm", [
            {"metric": f"{CHATS} chats tok/s, Personae on vLLM / vLLM direct", "value": round(tps, 3),
             "target": ">= 0.9"},
            {"metric": "tok/s Personae on vLLM (best of 2)", "value": round(max(rounds["personae"]), 1)},
            {"metric": "tok/s vLLM direct (best of 2)", "value": round(max(rounds["direct"]), 1)},
            {"metric": "lone chat TTFT p50 ms, Personae on vLLM", "value": round(p50["personae"] * 1000, 1),
             "target": f"<= 1.1x direct + 50 = {round(p50['direct'] * 1100 + 50, 1)}"},
            {"metric": "lone chat TTFT p50 ms, vLLM direct", "value": round(p50["direct"] * 1000, 1)},
        ])
    finally:
        server.stop()

"""vLLM benchmarks on SmolLM2, one vLLM CPU server (`make vllm`) for the module, ratios in one run.

1. Personae on vLLM against the same vLLM called directly: the same prompts (Personae's token ids
   replayed), the same settings. Concurrent chats on two LoRA characters: tokens/s (target >= 0.9x
   direct); a lone chat's time to first token, p50 (target <= 1.1x direct + 50 ms), as ratio and difference.
2. The issue's local-vs-vLLM table: this project's generator (the `local` backend) against vLLM, same
   token ids, greedy, every reply exactly TOKENS tokens: a lone chat, PROMPTS at once on the base,
   LORAS chats on LORAS different LoRAs (r=16, q/k/v/o), the same LORAS chats on the base.
Both sides interleaved (A, B, A, B), best of 2. Sizes from the environment, for a quick check:
PERSONAE_BENCH_VLLM_PROMPTS (16; prompts of ~500 tokens, the built-in cards), PERSONAE_BENCH_VLLM_TOKENS
(128), PERSONAE_BENCH_VLLM_EAGER=1 (vLLM without torch.compile; the issue's table used it).
Saved to tests/bench/results/vllm.json. Run alone with `make bench-vllm`.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from bench_utils import report
from test_bench_generation import QUESTIONS, character_prompts, make_adapters

sys.path.insert(0, str(Path(__file__).parent.parent))
from helpers_vllm import VLLM_COMMAND, ensure_vllm, load_lora  # noqa: E402

from runtime.chat.engine import Turn  # noqa: E402

PROMPTS = int(os.environ.get("PERSONAE_BENCH_VLLM_PROMPTS", "16"))
TOKENS = int(os.environ.get("PERSONAE_BENCH_VLLM_TOKENS", "128"))
LORAS = min(8, PROMPTS)
LONE = min(3, PROMPTS)  # lone chats per round (median)
ARGS = ["--dtype", "float32", "--max-model-len", "4096", "--max-num-seqs", str(max(16, PROMPTS))]
if os.environ.get("PERSONAE_BENCH_VLLM_EAGER"):
    ARGS.append("--enforce-eager")
ROWS: list[dict] = []


@pytest.fixture(scope="module")
def bench(real_base, tmp_path_factory):
    """The vLLM server (LoRA slots for every adapter), LORAS adapters loaded there, the prompts."""
    from plugins.vllm.server import ManagedServer

    ensure_vllm()
    root = tmp_path_factory.mktemp("bench-vllm")
    folders = make_adapters(real_base, root, count=LORAS, rank=16)
    server = ManagedServer(VLLM_COMMAND, real_base.folder, args=ARGS, env={"VLLM_CPU_KVCACHE_SPACE": "2"},
                           log_dir=root, max_loras=LORAS, max_lora_rank=16)
    started = time.perf_counter()
    server.start(1800)
    ROWS.append({"metric": f"vLLM server start ({'eager' if '--enforce-eager' in ARGS else 'torch.compile'}), s",
                 "value": round(time.perf_counter() - started, 1)})
    try:
        for index, folder in enumerate(folders):
            load_lora(server.url, f"bench-a{index}", folder)
        yield {"url": server.url, "folders": folders, "prompts": character_prompts(real_base.tokenizer, PROMPTS)}
    finally:
        server.stop()
        report("vllm", ROWS)


# --- 1. Personae on vLLM against vLLM direct --------------------------------------------------------------


def direct_stream(url, model, request, out, index, exact=False):
    """One streamed completion straight to vLLM: (seconds to first text, tokens, finished at, text)."""
    s = request.sampling
    body = {"model": model, "prompt": list(request.input_ids), "max_tokens": s.max_new_tokens, "stream": True,
            "temperature": s.temperature, "top_p": s.top_p, "repetition_penalty": s.repetition_penalty,
            "stop": list(s.stop), "stream_options": {"include_usage": True}}
    if exact:  # the table: every reply exactly max_tokens long, as the local side's min_new_tokens
        body["min_tokens"] = s.max_new_tokens
    started, first, tokens, text = time.perf_counter(), None, 0, ""
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=1800) as response:
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
    """Run jobs in threads at once: (results, aggregate tokens/s)."""
    out = [None] * len(jobs)
    threads = [threading.Thread(target=target, args=(*job, out, i)) for i, job in enumerate(jobs)]
    started = time.perf_counter()
    [t.start() for t in threads]
    [t.join() for t in threads]
    return out, sum(r[1] for r in out) / (max(r[2] for r in out) - started)


@pytest.mark.real_model
def test_personae_on_vllm_against_vllm_direct(bench, make_engine, real_base):
    url = bench["url"]
    engine = make_engine(real_base, backend="vllm", plugins={"vllm": {"urls": [url]}})
    characters = ("pixel", "professor-quill")
    for index, character in enumerate(characters):
        engine.weights.registry.add(bench["folders"][index % LORAS], character, activate=True)
    direct_name = {c: f"bench-a{i % LORAS}" for i, c in enumerate(characters)}
    chats = min(8, PROMPTS)
    jobs = [(engine, characters[i % 2], f"c{i}", QUESTIONS[i]) for i in range(chats)]
    personae_chat(engine, "pixel", "warm", "Hello!", [None], 0)  # adapters loaded, paths warm
    rates = {"personae": [], "direct": []}
    ttft = {"personae": [], "direct": []}
    for _ in range(2):  # interleaved, best of 2 on both sides
        out, rate = concurrent(personae_chat, jobs)
        rates["personae"].append(rate)
        requests = [(url, direct_name[characters[i % 2]], out[i][3].stream.request) for i in range(chats)]
        direct, rate = concurrent(direct_stream, requests)
        rates["direct"].append(rate)
        assert [d[3] for d in direct] == [o[3].stream.text for o in out]  # the same replies
        for i in range(LONE):
            one = [None]
            personae_chat(engine, "pixel", f"lone{i}", QUESTIONS[i], one, 0)
            ttft["personae"].append(one[0][0])
            direct_stream(url, direct_name["pixel"], one[0][3].stream.request, one, 0)
            ttft["direct"].append(one[0][0])
    tps = max(rates["personae"]) / max(rates["direct"])
    p50 = {k: statistics.median(v) for k, v in ttft.items()}
    ROWS.extend([
        {"metric": f"{chats} chats on 2 LoRA characters, tok/s Personae on vLLM / vLLM direct",
         "value": round(tps, 3), "target": ">= 0.9"},
        {"metric": "  tok/s Personae on vLLM (best of 2)", "value": round(max(rates["personae"]), 1)},
        {"metric": "  tok/s vLLM direct (best of 2)", "value": round(max(rates["direct"]), 1)},
        {"metric": "lone chat TTFT p50, Personae on vLLM / vLLM direct", "value": round(p50["personae"] / p50["direct"], 3)},
        {"metric": "lone chat TTFT p50, Personae on vLLM - vLLM direct, ms",
         "value": round((p50["personae"] - p50["direct"]) * 1000, 1)},
        {"metric": "  lone chat TTFT p50 ms, Personae on vLLM", "value": round(p50["personae"] * 1000, 1),
         "target": f"<= 1.1x direct + 50 = {round(p50['direct'] * 1100 + 50, 1)}"},
        {"metric": "  lone chat TTFT p50 ms, vLLM direct", "value": round(p50["direct"] * 1000, 1)},
    ])


# --- 2. The local generator against vLLM -----------------------------------------------------------------


def exact(tokens=TOKENS):
    from runtime.generation.types import SamplingSettings

    return SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=tokens, min_new_tokens=tokens)


def local_together(gen, prompts, adapters):
    """Submit all at once to the local generator: (tokens/s, texts)."""
    from runtime.generation.types import Request

    started = time.perf_counter()
    streams = [gen.submit(Request(list(p), exact(), a)) for p, a in zip(prompts, adapters)]
    texts = [s.result() for s in streams]
    return sum(s.completion_tokens for s in streams) / (time.perf_counter() - started), texts


def vllm_together(url, prompts, models):
    from runtime.generation.types import Request

    jobs = [(url, m, Request(list(p), exact())) for p, m in zip(prompts, models)]
    out = [None] * len(jobs)
    threads = [threading.Thread(target=direct_stream, args=(*job, out, i, True)) for i, job in enumerate(jobs)]
    started = time.perf_counter()
    [t.start() for t in threads]
    [t.join() for t in threads]
    return sum(r[1] for r in out) / (max(r[2] for r in out) - started), [r[3] for r in out]


def lone_local(gen, prompts):
    from runtime.generation.types import BASE_ADAPTER

    rates = [local_together(gen, [p], [BASE_ADAPTER])[0] for p in prompts]
    return statistics.median(rates), None


def lone_vllm(url, model, prompts):
    rates = [vllm_together(url, [p], [model])[0] for p in prompts]
    return statistics.median(rates), None


@pytest.mark.real_model
def test_local_generator_against_vllm_table(bench, real_base):
    from plugins.local import local_generator
    from runtime.config import load_settings
    from runtime.generation.types import BASE_ADAPTER

    url, prompts = bench["url"], bench["prompts"]
    base_model = next(m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"] if not m.get("parent"))
    gen = local_generator(load_settings(), real_base)  # the `local` backend as Personae builds it
    try:
        names = [f"a{i}" for i in range(LORAS)]
        for name, folder in zip(names, bench["folders"]):
            gen.load_adapter(name, folder)
        local_together(gen, prompts[:2], [BASE_ADAPTER, names[0]])  # warm-up, both sides
        vllm_together(url, prompts[:2], [base_model, "bench-a0"])
        scenarios = {
            "lone chat": (lambda: lone_local(gen, prompts[:LONE]), lambda: lone_vllm(url, base_model, prompts[:LONE])),
            f"{PROMPTS} at once": (lambda: local_together(gen, prompts, [BASE_ADAPTER] * PROMPTS),
                                   lambda: vllm_together(url, prompts, [base_model] * PROMPTS)),
            f"{LORAS} chats on {LORAS} LoRAs": (lambda: local_together(gen, prompts[:LORAS], names),
                                              lambda: vllm_together(url, prompts[:LORAS],
                                                                    [f"bench-a{i}" for i in range(LORAS)])),
            f"same {LORAS} on the base": (lambda: local_together(gen, prompts[:LORAS], [BASE_ADAPTER] * LORAS),
                                          lambda: vllm_together(url, prompts[:LORAS], [base_model] * LORAS)),
        }
        table, same, compared = {}, 0, 0
        for label, (local, vllm) in scenarios.items():
            best = {"local": 0.0, "vllm": 0.0}
            for _ in range(2):  # interleaved: a slow spell on the machine hits both alike
                rate, local_texts = local()
                best["local"] = max(best["local"], rate)
                rate, vllm_texts = vllm()
                best["vllm"] = max(best["vllm"], rate)
            if local_texts is not None:  # greedy float32 on both: how often the replies agree
                same += sum(a == b for a, b in zip(local_texts, vllm_texts))
                compared += len(local_texts)
            table[label] = best
    finally:
        gen.close()
    sizes = f"{min(len(p) for p in prompts)}-{max(len(p) for p in prompts)} prompt tokens, {TOKENS} greedy tokens each"
    ROWS.append({"metric": f"local vs vLLM table ({sizes}; tok/s, best of 2)", "value": ""})
    for label, best in table.items():
        ROWS.extend([
            {"metric": f"  {label}: local generator tok/s", "value": round(best["local"], 1)},
            {"metric": f"  {label}: vLLM tok/s", "value": round(best["vllm"], 1)},
            {"metric": f"  {label}: vLLM / local", "value": round(best["vllm"] / best["local"], 2)},
        ])
    ROWS.append({"metric": "  greedy replies identical, local vs vLLM (float32 both)", "value": f"{same}/{compared}"})

"""backend = "llamacpp" against llama.cpp's own llama-server on the same Q4_1 GGUF, the same prompts and LoRAs.

Ratios in one run (the machine is shared): lone chat decode tokens/s (target >= 0.9x llama-server; each side
in a fresh process of its own, tests/bench/lone_decode.py, taking turns A, B, A, B on one prompt, with the
CPU time and voluntary context switches per token beside the tok/s),
8 chats on 8 different LoRAs (aggregate tokens/s >= 1.2x, p95 first token <= 0.3x; with lanes decoded
one after another on both threads, `parallel = 1`, and two at a time on one thread each, `parallel = 2`),
and, against the
fp32 path (`backend = "local"`), greedy agreement of the replies and perplexity on the cards' example
dialogues. llama-server comes from `make llama-server` ($LLAMA_SERVER overrides); both sides use 2
threads, greedy decoding, no repetition penalty, 128 tokens per reply (end-of-sequence ignored).
Without llama-server the reference is llama-cpp-python's own generate loop (every row names it).
Saved to tests/bench/results/llamacpp.json.
"""

from __future__ import annotations

import math
import os
import socket
import statistics
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from bench_utils import report
from lone_decode import LlamaServer, OurWorker, streamed_tokens
from test_bench_generation import QUESTIONS, character_prompts, make_adapters

REPO = Path(__file__).resolve().parents[2]
SERVER = Path(os.environ.get("LLAMA_SERVER", REPO / ".cache" / "llama.cpp" / "build" / "bin" / "llama-server"))
CHATS, TOKENS, THREADS, LONE_TURNS = 8, 128, 2, 3


def p95(values):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


def start_server(gguf, loras, log_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [str(SERVER), "-m", str(gguf), "-t", str(THREADS), "-tb", str(THREADS), "-np", str(CHATS),
               "-c", str(CHATS * 2048), "--host", "127.0.0.1", "--port", str(port), "--lora-init-without-apply"]
    command += ["--lora", ",".join(str(lora) for lora in loras)]  # one list: a repeated --lora is deprecated
    process = subprocess.Popen(command, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"llama-server did not start: {Path(log_path).read_text()[-2000:]}")


def server_reply(url, prompt, lora, out, index):
    """One streamed /completion: (first token s, tokens, finished at, text, decode tok/s between first and last)."""
    body = {"prompt": prompt, "n_predict": TOKENS, "temperature": 0, "ignore_eos": True, "stream": True,
            "repeat_penalty": 1.0, "cache_prompt": False,
            "lora": [{"id": i, "scale": 1.0 if i == lora else 0.0} for i in range(CHATS)]}
    started, stamps, text = time.perf_counter(), [], ""
    for stamp, content in streamed_tokens(url, body):
        stamps.append(stamp)
        text += content
    out[index] = (stamps[0] - started, len(stamps), stamps[-1], text, (len(stamps) - 1) / (stamps[-1] - stamps[0]))


class RawReference:
    """When llama-server is not built: llama-cpp-python's own `Llama` loop, one context per LoRA, one chat at a time."""

    def __init__(self, gguf, loras):
        from llama_cpp import Llama

        self.models = {-1: Llama(model_path=str(gguf), n_ctx=2048, n_threads=THREADS, verbose=False)}
        for index, lora in enumerate(loras):
            self.models[index] = Llama(model_path=str(gguf), lora_path=str(lora), n_ctx=2048, n_threads=THREADS,
                                       verbose=False)
        self.lock = threading.Lock()

    def reply(self, prompt, lora, out, index):
        started, stamps, tokens = time.perf_counter(), [], []
        with self.lock:
            for token in self.models[lora].generate(list(prompt), temp=0.0, repeat_penalty=1.0, reset=True):
                stamps.append(time.perf_counter())
                tokens.append(token)
                if len(tokens) == TOKENS:
                    break
        text = self.models[lora].detokenize(tokens).decode("utf-8", "replace")
        out[index] = (stamps[0] - started, len(stamps), stamps[-1], text, (len(stamps) - 1) / (stamps[-1] - stamps[0]))


def our_reply(gen, prompt, adapter, out, index):
    from runtime.generation.types import Request, SamplingSettings

    sampling = SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=TOKENS, min_new_tokens=TOKENS)
    stream = gen.submit(Request(list(prompt), sampling, adapter))
    stream.result()
    decode = (stream.completion_tokens - 1) / (stream.finished_at - stream.first_token_at)
    out[index] = (stream.ttft, stream.completion_tokens, stream.finished_at, stream.text, decode)


def together(target, jobs):
    out = [None] * len(jobs)
    threads = [threading.Thread(target=target, args=(*job, out, i)) for i, job in enumerate(jobs)]
    started = time.perf_counter()
    [t.start() for t in threads]
    [t.join() for t in threads]
    return out, sum(r[1] for r in out) / (max(r[2] for r in out) - started)


def perplexities(real_base, lane, catalog):
    """Perplexity of the fp32 base and of llama.cpp's Q4_1 on every card's example dialogues."""
    import torch

    fp32, quantised = [], []
    for name in catalog.names():
        for block in catalog.get(name).example_dialogues():
            ids = real_base.tokenizer.apply_chat_template(block, tokenize=True, return_dict=False)[:512]
            with torch.inference_mode():
                logits = real_base.model(torch.tensor([ids])).logits[0, :-1].float()
                fp32 += torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0].tolist()
            quantised += lane.score(ids)
    return math.exp(-statistics.mean(fp32)), math.exp(-statistics.mean(quantised)), len(fp32)


def lone_decode(prompt, tmp_path):
    """{side: [measurements]}: ours and llama-server each in a fresh process, taking turns on the same prompt."""
    from runtime.models.base import packaged_gguf

    ours = OurWorker(THREADS, TOKENS, tmp_path / "lone-ours.log")
    try:
        server = LlamaServer(SERVER, packaged_gguf(), THREADS, TOKENS, tmp_path / "lone-server.log")
        try:
            turns = {"ours": [], "server": []}
            for _ in range(LONE_TURNS):  # A, B, A, B: drift on the shared machine hits both sides alike
                turns["ours"].append(ours.reply(prompt))
                turns["server"].append(server.reply(prompt))
        finally:
            server.close()
    finally:
        ours.close()
    assert all(m["tokens"] == TOKENS for side in turns.values() for m in side)
    return turns


def lone_rows(turns, reference):
    """The lone-decode rows: medians of tok/s, CPU ms and voluntary switches per token, and their ratios."""
    median = {side: {key: statistics.median(m[key] for m in turns[side]) for key in ("decode", "cpu_ms", "vcsw")}
              for side in turns}
    ours, theirs = median["ours"], median["server"]
    return [
        {"metric": "lone chat decode tok/s, ours (own process)", "value": round(ours["decode"], 1),
         "runs": [round(m["decode"], 1) for m in turns["ours"]]},
        {"metric": f"lone chat decode tok/s, {reference} (own process)", "value": round(theirs["decode"], 1),
         "runs": [round(m["decode"], 1) for m in turns["server"]]},
        {"metric": "lone chat decode, ours / reference", "value": round(ours["decode"] / theirs["decode"], 2),
         "target": ">= 0.9"},
        {"metric": "lone chat decode CPU ms per token, ours / reference",
         "value": round(ours["cpu_ms"] / theirs["cpu_ms"], 2),
         "runs": [[round(m["cpu_ms"], 2) for m in turns[side]] for side in ("ours", "server")]},
        {"metric": "lone chat decode voluntary context switches per token, ours",
         "value": round(ours["vcsw"], 1)},
        {"metric": f"lone chat decode voluntary context switches per token, {reference}",
         "value": round(theirs["vcsw"], 1)},
    ]


@pytest.mark.real_model
def test_llamacpp_backend_against_llama_server(make_engine, real_base, tmp_path):
    from plugins.llamacpp.lora_gguf import cached_lora
    from plugins.llamacpp.native import Lane
    from runtime.models.base import packaged_gguf

    prompts = character_prompts(real_base.tokenizer, CHATS, questions=QUESTIONS)
    lone_turns = lone_decode(prompts[0], tmp_path) if SERVER.exists() else None  # first, on a calm machine
    folders = make_adapters(real_base, tmp_path, count=CHATS)
    names = [f"a{i}" for i in range(CHATS)]
    engine = make_engine(real_base, backend="llamacpp", threads=THREADS, plugins={"llamacpp": {"parallel": 1}})
    gen = engine.generator  # lanes in turn, both threads each
    side_by_side = make_engine(real_base, backend="llamacpp", threads=THREADS,
                               plugins={"llamacpp": {"parallel": 2}}).generator
    for name, folder in zip(names, folders):
        gen.load_adapter(name, folder)
        side_by_side.load_adapter(name, folder)
    loras = [cached_lora(folder, real_base.model, Path(engine.settings.cache_dir) / "llamacpp-lora")
             for folder in folders]
    if SERVER.exists():
        reference = "llama-server"
        process, url = start_server(packaged_gguf(), loras, tmp_path / "llama-server.log")
        server_reply_to = lambda p, a, o, i: server_reply(url, p, a, o, i)  # noqa: E731
    else:  # `make bench` builds it; without it, say so in every row and compare with llama.cpp's own loop
        reference, process = "llama-cpp-python Llama, one chat at a time", None
        server_reply_to = RawReference(packaged_gguf(), loras).reply
    try:
        in_bench, in_bench_reference = [], []  # the engine inside this process, where torch ran on 2 threads
        for _ in range(LONE_TURNS):
            out = [None]
            our_reply(gen, prompts[0], "__base__", out, 0)
            in_bench.append(out[0])
            if lone_turns is None:  # no llama-server: llama-cpp-python's own loop, in this process too
                server_reply_to(prompts[0], -1, out, 0)
                in_bench_reference.append(out[0])
        if lone_turns is None:
            lone_turns = {side: [{"decode": r[4], "cpu_ms": math.nan, "vcsw": math.nan, "tokens": r[1]} for r in runs]
                          for side, runs in (("ours", in_bench), ("server", in_bench_reference))}
        ours_mixed = parallel_mixed = server_mixed = None
        for _ in range(2):
            ours = together(lambda p, a, o, i: our_reply(gen, p, a, o, i), list(zip(prompts, names)))
            theirs = together(server_reply_to, [(p, i) for i, p in enumerate(prompts)])
            two = together(lambda p, a, o, i: our_reply(side_by_side, p, a, o, i), list(zip(prompts, names)))
            ours_mixed = max(ours_mixed or ours, ours, key=lambda r: r[1])
            server_mixed = max(server_mixed or theirs, theirs, key=lambda r: r[1])
            parallel_mixed = max(parallel_mixed or two, two, key=lambda r: r[1])
    finally:
        if process is not None:
            process.kill()
            process.wait()

    local = make_engine(real_base, threads=THREADS).generator  # the fp32 path
    for name, folder in zip(names, folders):
        local.load_adapter(name, folder)
    fp32 = together(lambda p, a, o, i: our_reply(local, p, a, o, i), list(zip(prompts, names)))[0]
    texts = [r[3] for r in ours_mixed[0]]
    identical = sum(a[3] == b for a, b in zip(fp32, texts))
    agree = []
    for a, b in zip(fp32, texts):
        x, y = real_base.tokenizer(a[3])["input_ids"], real_base.tokenizer(b)["input_ids"]
        same = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
        agree.append(same / max(1, min(len(x), len(y))))
    lane = Lane(gen.model, None, slots=1, n_ctx=1024)
    ppl_fp32, ppl_q4, scored = perplexities(real_base, lane, engine.catalog)
    lane.close()

    ttft_ours, ttft_server = p95([r[0] for r in ours_mixed[0]]), p95([r[0] for r in server_mixed[0]])
    ttft_parallel = p95([r[0] for r in parallel_mixed[0]])
    rows = [
        *lone_rows(lone_turns, reference),
        {"metric": "lone chat decode tok/s, ours inside the bench process",
         "value": round(statistics.median(r[4] for r in in_bench), 1), "runs": [round(r[4], 1) for r in in_bench]},
        {"metric": "8 chats on 8 LoRAs tok/s, ours", "value": round(ours_mixed[1], 1)},
        {"metric": f"8 chats on 8 LoRAs tok/s, {reference}", "value": round(server_mixed[1], 1)},
        {"metric": "8 chats on 8 LoRAs tok/s, ours / reference", "value": round(ours_mixed[1] / server_mixed[1], 2),
         "target": ">= 1.2"},
        {"metric": "8 chats on 8 LoRAs tok/s, ours with parallel = 2", "value": round(parallel_mixed[1], 1)},
        {"metric": "8 chats on 8 LoRAs tok/s, ours with parallel = 2 / reference",
         "value": round(parallel_mixed[1] / server_mixed[1], 2), "target": ">= 1.2"},
        {"metric": "8 LoRAs p95 first token s, ours", "value": round(ttft_ours, 2)},
        {"metric": "8 LoRAs p95 first token s, ours with parallel = 2", "value": round(ttft_parallel, 2)},
        {"metric": f"8 LoRAs p95 first token s, {reference}", "value": round(ttft_server, 2)},
        {"metric": "8 LoRAs p95 first token, ours / reference", "value": round(ttft_ours / ttft_server, 2),
         "target": "<= 0.3"},
        {"metric": "greedy replies identical to the fp32 path (8 LoRAs, 128 tokens)", "value": f"{identical}/{CHATS}"},
        {"metric": "greedy agreement with fp32: share of tokens before the first difference",
         "value": round(statistics.mean(agree), 2)},
        {"metric": f"perplexity on the cards' example dialogues ({scored} tokens), fp32",
         "value": round(ppl_fp32, 3)},
        {"metric": "perplexity on the cards' example dialogues, llama.cpp Q4_1", "value": round(ppl_q4, 3)},
    ]
    report("llamacpp", rows)
    assert all(r[1] == TOKENS for r in ours_mixed[0]) and all(r[1] == TOKENS for r in server_mixed[0])
    assert [r[3] for r in parallel_mixed[0]] == texts  # lanes side by side reply exactly what they reply in turn

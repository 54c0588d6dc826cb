"""HTTP API overhead on SmolLM2-135M: tokens/s and time to first token, API against in-process engine.

Each prompt runs in-process and through the API in turn (interleaved, so the shared machine's load
drifts over both alike); the table is printed and saved to tests/bench/results/http.json.
"""

from __future__ import annotations

import json
import statistics
import time

import httpx
from bench_utils import report
from http_server import LiveServer

from runtime.chat.engine import Turn

NEW_TOKENS = 32
ROUNDS = 2
QUESTIONS = ["Tell me about your ship.", "What is your favourite book?", "Describe a storm at sea.",
             "Explain how stars form."]
SAMPLING = {"temperature": 0, "max_new_tokens": NEW_TOKENS, "repetition_penalty": 1.0}


def in_process(engine, question: str) -> tuple[float, float, int]:
    """(seconds to first piece, seconds in all, tokens) of one reply straight from the engine."""
    started = time.perf_counter()
    first = None
    reply = engine.reply(Turn(platform="bench", channel="in-process", user_id="bench", text=question,
                              character=engine.catalog.get("captain-mara-voss"), sampling=SAMPLING, history=[]))
    for piece in reply:
        if first is None and piece.strip():
            first = time.perf_counter() - started
    return first, time.perf_counter() - started, reply.stream.completion_tokens


def over_http(client: httpx.Client, question: str) -> tuple[float, float, int]:
    """The same reply streamed through the API (a one-message request: the same prompt)."""
    body = {"model": "captain-mara-voss", "stream": True, "temperature": 0, "max_tokens": NEW_TOKENS,
            "repetition_penalty": 1.0, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": question}]}
    started = time.perf_counter()
    first, tokens = None, 0
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if first is None and any(c["delta"].get("content") for c in chunk["choices"]):
                first = time.perf_counter() - started
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return first, time.perf_counter() - started, tokens


def test_http_tokens_per_second_against_in_process(make_engine, real_base):
    engine = make_engine(real_base)
    live = LiveServer(engine)
    runs = {"engine": [], "http": []}
    try:
        with httpx.Client(base_url=live.url, timeout=600) as client:
            in_process(engine, "Warm up.")  # first-call costs (kernels, caches) out of the numbers
            over_http(client, "Warm up.")
            for _ in range(ROUNDS):
                for question in QUESTIONS:
                    runs["engine"].append(in_process(engine, question))
                    runs["http"].append(over_http(client, question))
    finally:
        live.close()

    def tokens_per_second(rows):
        return sum(r[2] for r in rows) / sum(r[1] for r in rows)

    def median_ms(rows):
        return statistics.median(r[0] for r in rows if r[0] is not None) * 1000

    engine_tps, http_tps = tokens_per_second(runs["engine"]), tokens_per_second(runs["http"])
    ratio = http_tps / engine_tps
    overhead = median_ms(runs["http"]) - median_ms(runs["engine"])
    assert sum(r[2] for r in runs["http"]) == sum(r[2] for r in runs["engine"])  # same work both ways
    report("http", [
        {"metric": "replies per side", "value": len(runs["http"])},
        {"metric": "in-process tokens/s", "value": round(engine_tps, 1)},
        {"metric": "HTTP streaming tokens/s", "value": round(http_tps, 1)},
        {"metric": "HTTP / in-process tokens/s", "value": round(ratio, 3), "target": ">= 0.9",
         "met": ratio >= 0.9},
        {"metric": "in-process median TTFT ms", "value": round(median_ms(runs["engine"]), 1)},
        {"metric": "HTTP median TTFT ms", "value": round(median_ms(runs["http"]), 1)},
        {"metric": "TTFT overhead ms (median)", "value": round(overhead, 1)},
    ])

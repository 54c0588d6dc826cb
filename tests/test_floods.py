"""Floods, measured (numbers printed, memory bounded): concurrent HTTP streams (40 in `make test`, 200 in
`make stress`) and how fast over-limit requests are refused; 1,000 Discord messages from 100 users over 20
channels through the real bot (`make stress`)."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import statistics
import threading
import time

import httpx
import pytest
from http_server import LiveServer

from plugins.discord.tables import DiscordTables
from tests.discord_harness import CHANNEL_ID, FakeDiscord, running_bot

STRESS = bool(os.environ.get("PERSONAE_STRESS"))
stress_only = pytest.mark.skipif(not STRESS, reason="minutes of load: run by `make stress`")
# (PERSONAE_FLOOD_MESSAGES / _SECONDS scale it down for a quick look.)
MESSAGES = int(os.environ.get("PERSONAE_FLOOD_MESSAGES", 1000))
SECONDS = float(os.environ.get("PERSONAE_FLOOD_SECONDS", 60))
USERS, CHANNELS = 100, 20
# Memory a flood may add to the process, at most: caches and queues are bounded, so it must level off.
RSS_BOUND_MB = 400


def rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def sample_rss(peak: list[float], stop: threading.Event) -> None:
    """In a thread, not a task: the harness waits for every task of the loop to finish."""
    while not stop.wait(0.2):
        peak[0] = max(peak[0], rss_mb())


@stress_only
def test_discord_flood_of_a_thousand_messages(make_engine, tiny_base):
    engine = make_engine(tiny_base)  # the default generator settings (160 new tokens, queue of 64)
    channels = [CHANNEL_ID] + [1300000000000001000 + i for i in range(CHANNELS - 1)]
    for channel in channels:
        engine.store.bind("discord", str(channel), "pixel")

    fake = FakeDiscord()  # 20 channels in the guild the bot joins
    for index, channel in enumerate(channels[1:]):
        fake.channels[channel] = {**fake.channels[CHANNEL_ID], "id": str(channel), "name": f"flood-{index}",
                                  "position": 10 + index}

    async def scenario(h):
        for i in range(USERS):
            h.users[f"user{i}"] = {"id": str(1000000000000100000 + i), "username": f"user{i}",
                                   "global_name": f"User {i}", "discriminator": "0", "avatar": None, "bot": False,
                                   "public_flags": 0}
            h.roles[f"user{i}"] = []
        before, peak, stop = rss_mb(), [rss_mb()], threading.Event()
        sampler = threading.Thread(target=sample_rss, args=(peak, stop), daemon=True)
        sampler.start()
        sent, started = [], time.monotonic()
        for i in range(MESSAGES):
            author, channel = f"user{i % USERS}", channels[(i * 7) % CHANNELS]
            payload = await h.message(f"Pixel, flood message {i}", author=author, channel_id=channel, wait=False)
            sent.append((payload["id"], author, channel))
            await asyncio.sleep(max(0.0, started + SECONDS * (i + 1) / MESSAGES - time.monotonic()))
        await h.settle(timeout=3600)
        stop.set()
        sampler.join()
        return sent, before, peak[0], rss_mb(), time.monotonic() - started

    async def main():
        async with running_bot(engine, {"streaming": False, "greet": False}, fake) as harness:
            result = await scenario(harness)
            return result, harness.fake

    (sent, before, peak, after, took), fake = asyncio.run(main())
    logged = {r["platform_message_id"]: r for r in engine.store.query(
        "select * from messages where role = 'user' and platform = 'discord'")}
    replies = {r["reply_to"] for r in engine.store.query("select reply_to from messages where role = 'assistant'")}
    refusals = DiscordTables(engine.store).refusals()
    notices = [c for c in fake.bot_messages() if c.json.get("message_reference")]
    # (discord.py sends the referenced id as a number; the log keeps Discord ids as text.)
    told = {str(c.json["message_reference"]["message_id"]): c.json["content"] for c in notices}
    answered = [mid for mid, _, _ in sent if mid in logged and logged[mid]["id"] in replies]
    reasons = {reason: [mid for mid, _, _ in sent if refusals.get(mid) == reason]
               for reason in ("user_rate", "channel_rate", "busy")}
    warned = [mid for mid in told if "faster than" in told[mid] or "very busy" in told[mid]]
    told_busy = [mid for mid in told if "queue of people" in told[mid]]
    # None silently dropped: every message was answered, or the log says why not (and the user was told:
    # each busy one, the first of each rate-limit window).
    dropped = [m for m in sent if m[0] not in answered and m[0] not in refusals]
    orphans = [mid for mid in logged if logged[mid]["id"] not in replies]
    print(f"\nDiscord flood: {MESSAGES} messages, {USERS} users, {CHANNELS} channels in {took:.0f} s: "
          f"{len(answered)} answered, {len(reasons['user_rate'])} over the user limit and "
          f"{len(reasons['channel_rate'])} over the channel limit ({len(warned)} warnings, one per window), "
          f"{len(reasons['busy'])} told busy, {len(dropped)} dropped, {len(orphans)} orphans; "
          f"RSS {before:.0f} -> peak {peak:.0f} -> {after:.0f} MB")
    assert dropped == [] and orphans == []
    assert len(answered) + sum(map(len, reasons.values())) == MESSAGES and answered
    assert sorted(told_busy) == sorted(reasons["busy"])
    assert set(warned) <= set(reasons["user_rate"]) | set(reasons["channel_rate"])
    assert peak - before < RSS_BOUND_MB
    assert engine.store.query("pragma integrity_check")[0]["integrity_check"] == "ok"


# At full size the server's defaults (generator queue 64, batch 16, 256 requests at once); the small run in
# `make test` lowers the limits so that both refusals (the generator's 429, the server's 503) come up.
STREAMS = 200 if STRESS else 40
SMALL_LIMITS = {} if STRESS else {"max_queue": 6, "max_batch": 4}
SMALL_HTTP = {} if STRESS else {"max_concurrent_requests": 24}
NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]  # timings of the server, not of Nagle's algorithm


async def stream_once(client, index):
    """('done', message id, seconds) or (status, None, seconds to the refusal); anything else fails the test."""
    body = {"model": "pixel", "stream": True, "max_tokens": 32, "user": f"flood-{index}",
            "messages": [{"role": "user", "content": f"Hello number {index}"}]}
    started = time.perf_counter()
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        answered_at = time.perf_counter() - started
        if response.status_code in (429, 503):  # the generator's queue is full / the server's request limit
            error = json.loads(await response.aread())["error"]
            # Polite: OpenAI's error shape, our code, and when to come back.
            assert error["code"] == "server_busy" and int(response.headers["retry-after"]) >= 1, error
            return response.status_code, None, answered_at
        assert response.status_code == 200, await response.aread()
        message_id, ended = None, False
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                assert "error" not in chunk, chunk
                message_id = chunk.get("personae_message_id") or message_id
            ended = ended or line == "data: [DONE]"
        assert ended and message_id is not None
        return "done", message_id, answered_at


def test_concurrent_http_streams_are_answered_or_refused_politely(make_engine, tiny_base):
    engine = make_engine(tiny_base, **SMALL_LIMITS, plugins={"http": SMALL_HTTP})
    engine.generator, engine.catalog.names()  # loaded before the first request, as `personae serve` does
    live = LiveServer(engine, keys=["flood-key"])
    headers = {"authorization": "Bearer flood-key"}
    before, peak, stop = rss_mb(), [rss_mb()], threading.Event()
    sampler = threading.Thread(target=sample_rss, args=(peak, stop), daemon=True)
    sampler.start()
    try:
        async def flood():
            limits = httpx.Limits(max_connections=STREAMS, max_keepalive_connections=0)
            transport = httpx.AsyncHTTPTransport(limits=limits, socket_options=NODELAY)
            async with httpx.AsyncClient(base_url=live.url, transport=transport, timeout=600,
                                         headers=headers) as client:
                # return_exceptions: a reset or a dropped connection is counted and fails below, not hidden.
                return await asyncio.gather(*(stream_once(client, i) for i in range(STREAMS)),
                                            return_exceptions=True)

        started = time.monotonic()
        results = asyncio.run(flood())
        took = time.monotonic() - started
        stop.set()
        sampler.join()
        after = rss_mb()
        failures = [repr(r) for r in results if isinstance(r, BaseException)]
        assert failures == [], failures[:5]
        done = [mid for status, mid, _ in results if status == "done"]
        refused = {code: sorted(t for status, _, t in results if status == code) for code in (429, 503)}
        healthy = httpx.get(live.url + "/healthz").json()
        metrics = counted(httpx.get(live.url + "/metrics", headers=headers).text)
        timings = time_to_reject(live.url, headers, tries=30 if STRESS else 10)
    finally:
        stop.set()
        live.close()
    # Every answered turn and its reply are in the log; a refused turn left no message behind (no orphans).
    # (Besides replies, the log holds each new conversation's greeting, the card's text, logged when it opened.)
    asked = engine.store.query("select id from messages where role = 'user' and platform = 'http'")
    answers = engine.store.query("select id, reply_to, weights_version from messages "
                                 "where role = 'assistant' and platform = 'http'")
    replies = [a for a in answers if a["reply_to"] is not None]
    assert all(a["weights_version"] == "card" for a in answers if a["reply_to"] is None)
    assert len(asked) == len(replies) == len(done) and {a["reply_to"] for a in replies} == {q["id"] for q in asked}
    assert {a["id"] for a in replies} == set(done)
    assert engine.store.query("pragma integrity_check")[0]["integrity_check"] == "ok"
    assert healthy["queue_depth"] == 0
    # And every outcome is counted in /metrics, refusals included.
    assert metrics.get(("personae_http_requests_total", "ok"), 0) == len(done)
    assert metrics.get(("personae_http_requests_total", "busy"), 0) == len(refused[429])
    assert metrics.get(("personae_http_request_seconds_count", "503"), 0) == len(refused[503])
    # And in the log's own account (http_refusals, counted per minute; the server's shutdown writes the last).
    in_log = {row["status"]: row["n"] for row in engine.store.query(
        "select status, sum(count) as n from http_refusals group by status")} if refused[429] or refused[503] else {}
    assert in_log.get(429, 0) == len(refused[429]) and in_log.get(503, 0) == len(refused[503])

    def spread(seconds):
        return f"median {statistics.median(seconds) * 1000:.0f} ms, max {seconds[-1] * 1000:.0f} ms" if seconds else "-"

    print(f"\nHTTP flood: {STREAMS} concurrent streams in {took:.0f} s: {len(done)} answered, "
          f"{len(refused[429])} told 429 (generator queue full; {spread(refused[429])}), "
          f"{len(refused[503])} told 503 (request limit; {spread(refused[503])}), all in http_refusals, 0 resets or drops; "
          f"RSS {before:.0f} -> peak {peak[0]:.0f} -> {after:.0f} MB; time to reject, median of "
          f"{30 if STRESS else 10}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in timings.items()))
    assert len(done) + len(refused[429]) + len(refused[503]) == STREAMS and done
    assert peak[0] - before < RSS_BOUND_MB


def counted(text: str) -> dict[tuple[str, str], float]:
    """(sample name, status) -> value of the Prometheus exposition's chat request counters."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("route", "other") == "other" and "status" in sample.labels:
                key = (sample.name, sample.labels["status"])
                found[key] = found.get(key, 0) + sample.value
    return found


def time_to_reject(url: str, headers: dict, tries: int) -> dict[str, float]:
    """Median milliseconds to refuse each over-limit request (none reaches the generator); every one refused.

    Through http.client, one connection each, head and body in one write: httpx's own round trip on loopback
    costs ~40 ms here (measured against a raw socket), which would hide the server's time.
    """
    port = int(url.rsplit(":", 1)[1])
    def messages(n):
        return json.dumps({"model": "pixel", "messages": [{"role": "user", "content": "x"}] * n}).encode()

    typed = {"content-type": "application/json"}
    cases = {  # the server's default limits: 1 MiB bodies, 500 messages
        "401 no key": ({**typed}, messages(1)),
        "401 no key, 2 MB": ({}, b"x" * 2_000_000),
        "413 2 MB body": (headers, b"x" * 2_000_000),
        "413 2 MB chunked": (headers, None),
        "413 10 MB body": (headers, b"x" * 10_000_000),
        "400 10,000 messages": ({**headers, **typed}, messages(10_000)),
        "400 501 messages": ({**headers, **typed}, messages(501)),
        "400 malformed JSON": ({**headers, **typed}, b"{nope"),
        "400 invalid UTF-8": ({**headers, **typed}, b'{"model": "\xff\xfe"}'),
    }
    timings = {}
    for name, (sent_headers, body) in cases.items():
        seconds = []
        for _ in range(tries):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            connection.connect()
            connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            started = time.perf_counter()
            if body is None:  # chunked: no length declared, so the server counts as it reads
                connection.request("POST", "/v1/chat/completions", body=iter([b"x" * 65_536] * 32),
                                   headers=sent_headers, encode_chunked=True)
            else:
                connection.request("POST", "/v1/chat/completions", body=body, headers=sent_headers)
            response = connection.getresponse()
            answer = json.loads(response.read())
            seconds.append(time.perf_counter() - started)
            connection.close()
            assert response.status == int(name[:3]) and answer["error"]["message"], (name, answer)
        timings[name] = statistics.median(seconds) * 1000
    return timings

"""Floods, measured (`make stress`; numbers printed, memory bounded): 1,000 Discord messages from 100 users over
20 channels through the real bot, 200 concurrent HTTP streams, and how fast over-limit requests are refused."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import threading
import time

import httpx
import pytest
from http_server import LiveServer

from tests.discord_harness import CHANNEL_ID, FakeDiscord, running_bot

STRESS = bool(os.environ.get("PERSONAE_STRESS"))
pytestmark = pytest.mark.skipif(not STRESS, reason="minutes of load: run by `make stress`")
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
    notices = [c for c in fake.bot_messages() if c.json.get("message_reference")]
    told = {c.json["message_reference"]["message_id"]: c.json["content"] for c in notices}
    limited_users = {a for mid, a, _ in sent if mid in told and "faster than" in told[mid]}
    limited_channels = {ch for mid, _, ch in sent if mid in told and "very busy" in told[mid]}
    answered = [mid for mid, _, _ in sent if mid in logged and logged[mid]["id"] in replies]
    busy = [mid for mid in told if "queue of people" in told[mid]]
    warned = [mid for mid in told if "faster than" in told[mid] or "very busy" in told[mid]]
    quiet = [(mid, a, ch) for mid, a, ch in sent if mid not in logged and mid not in told]
    # A message not answered and not told is only ever one in a window its user or channel was warned about.
    dropped = [m for m in quiet if m[1] not in limited_users and m[2] not in limited_channels]
    unanswered_logged = [mid for mid in logged if logged[mid]["id"] not in replies and mid not in told]
    print(f"\nDiscord flood: {MESSAGES} messages, {USERS} users, {CHANNELS} channels in {took:.0f} s: "
          f"{len(answered)} answered, {len(warned)} warned (rate limit), {len(quiet)} more in warned windows, "
          f"{len(busy)} told busy, {len(dropped)} dropped; RSS {before:.0f} -> peak {peak:.0f} -> {after:.0f} MB")
    assert dropped == [] and unanswered_logged == []
    assert len(answered) + len(warned) + len(quiet) + len(busy) >= MESSAGES
    assert peak - before < RSS_BOUND_MB
    assert engine.store.query("pragma integrity_check")[0]["integrity_check"] == "ok"


async def stream_once(client, index):
    body = {"model": "pixel", "stream": True, "max_tokens": 32, "user": f"flood-{index}",
            "messages": [{"role": "user", "content": f"Hello number {index}"}]}
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code in (429, 503):  # the generator's queue is full / the server's connection limit
            await response.aread()
            return ("busy" if response.status_code == 429 else "503"), None
        assert response.status_code == 200, await response.aread()
        message_id = None
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                message_id = json.loads(line[6:]).get("personae_message_id") or message_id
        return "done", message_id


@pytest.mark.skip(reason="unfinished: at 200 concurrent streams through tests/http_server.LiveServer (uvicorn "
                         "limit_concurrency=200) some clients get 503 and connection resets; to diagnose before it "
                         "counts (issue 19)")
def test_two_hundred_concurrent_http_streams_and_time_to_reject(make_engine, tiny_base):
    engine = make_engine(tiny_base, plugins={"http": {"max_body_bytes": 65_536, "max_messages": 50}})
    live = LiveServer(engine, keys=["flood-key"])
    headers = {"authorization": "Bearer flood-key"}
    try:
        async def flood():
            limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
            async with httpx.AsyncClient(base_url=live.url, limits=limits, timeout=600, headers=headers) as client:
                return await asyncio.gather(*(stream_once(client, i) for i in range(200)))

        before = rss_mb()
        started = time.monotonic()
        results = asyncio.run(flood())
        took, after = time.monotonic() - started, rss_mb()
        done = [mid for status, mid in results if status == "done"]
        busy = sum(1 for status, _ in results if status == "busy")
        refused = sum(1 for status, _ in results if status == "503")
        for message_id in done:
            reply = engine.store.message(message_id)
            assert reply["role"] == "assistant" and engine.store.message(reply["reply_to"])["role"] == "user"
        # Time to reject: each over-limit request refused before any work, over 30 tries each.
        cases = {
            "401 no key": dict(headers={}, json={"model": "pixel", "messages": [{"role": "user", "content": "x"}]}),
            "413 1 MB body": dict(headers=headers, content=b"x" * 1_000_000),
            "400 51 messages": dict(headers=headers, json={"model": "pixel",
                                                          "messages": [{"role": "user", "content": "x"}] * 51}),
            "400 malformed JSON": dict(headers={**headers, "content-type": "application/json"}, content=b"{nope"),
        }
        timings = {}
        with httpx.Client(base_url=live.url, timeout=60) as client:
            for name, request in cases.items():
                seconds = []
                for _ in range(30):
                    t = time.perf_counter()
                    response = client.post("/v1/chat/completions", **request)
                    seconds.append(time.perf_counter() - t)
                    assert response.status_code == int(name[:3]), (name, response.text)
                timings[name] = statistics.median(seconds) * 1000
    finally:
        live.close()
    print(f"\nHTTP flood: 200 concurrent streams in {took:.0f} s: {len(done)} answered, {busy} told 429; "
          f"RSS {before:.0f} -> {after:.0f} MB; time to reject (median of 30): "
          + ", ".join(f"{k} {v:.1f} ms" for k, v in timings.items()))
    assert len(done) + busy + refused == 200 and done
    assert after - before < RSS_BOUND_MB

"""Load: 50 concurrent streaming clients on loopback; each completes or is told to come back (429)."""

from __future__ import annotations

import asyncio
import json

import httpx
from http_server import LiveServer

CLIENTS = 50


async def one_client(client: httpx.AsyncClient, index: int) -> dict:
    body = {"model": ["pixel", "professor-quill", "captain-mara-voss"][index % 3], "stream": True,
            "max_tokens": 4, "temperature": 0, "user": f"load-{index}",
            "messages": [{"role": "user", "content": f"Hello number {index}"}]}
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code == 429:
            error = json.loads(await response.aread())["error"]
            return {"busy": True, "retry_after": response.headers.get("retry-after"), "error": error}
        assert response.status_code == 200, await response.aread()
        text, message_id, done = "", None, False
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                continue
            chunk = json.loads(line[6:])
            text += "".join(c["delta"].get("content") or "" for c in chunk["choices"])
            message_id = chunk.get("personae_message_id") or message_id
        return {"busy": False, "done": done, "text": text, "message_id": message_id, "user": f"http:load-{index}"}


async def many_clients(url: str) -> list[dict]:
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        return await asyncio.gather(*(one_client(client, i) for i in range(CLIENTS)))


def test_fifty_streaming_clients_complete_or_get_429(make_engine, tiny_base):
    # A short queue, so that some of the fifty are turned away while the others are served.
    engine = make_engine(tiny_base, max_queue=8)
    live = LiveServer(engine)
    try:
        results = asyncio.run(many_clients(live.url))
    finally:
        live.close()
    served = [r for r in results if not r["busy"]]
    busy = [r for r in results if r["busy"]]
    assert len(served) + len(busy) == CLIENTS and served
    for result in busy:
        assert int(result["retry_after"]) >= 1 and result["error"]["code"] == "server_busy"
    for result in served:
        assert result["done"] and result["message_id"]
        logged = engine.store.message(result["message_id"])
        asked = engine.store.message(logged["reply_to"])
        assert logged["text"] == result["text"] and logged["role"] == "assistant"
        assert asked["user_id"] == result["user"] and logged["completion_tokens"] == 4
    replies = engine.store.query(
        "select count(*) as n from messages where role = 'assistant' and reply_to is not null")[0]["n"]
    assert replies == len(served)  # every completed turn is logged, and nothing else was answered
    print(f"\n{len(served)} served, {len(busy)} told to retry")

"""SIGKILL of `personae serve` on the real SmolLM2 while replies stream: the log intact, no half-written reply,
and the restarted server answers on it (the tiny-model version at many moments is tests/test_crash_streams.py)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time

import httpx
import pytest

from test_crash_streams import check_log, free_port, start_server, stream

STREAMS = 4


@pytest.mark.real_model
def test_sigkill_while_smollm2_streams_then_the_restarted_server_answers(smollm2_folder, isolated_environment):
    # The model runs in the server process, so only its folder is needed here (not real_base in this one).
    data_dir = isolated_environment / "data"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(smollm2_folder, data_dir, port)
    try:
        finished = httpx.post(url + "/v1/chat/completions", timeout=120, json={
            "model": "pixel", "max_tokens": 8, "user": "before", "messages": [{"role": "user", "content": "Hi"}]})
        assert finished.status_code == 200, finished.text
        finished = finished.json()
        seen: dict[int, int] = {}
        clients = [threading.Thread(target=stream, args=(url, i, seen), daemon=True) for i in range(STREAMS)]
        for client in clients:
            client.start()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and sum(1 for n in seen.values() if n >= 5) < STREAMS:
            time.sleep(0.05)
        os.kill(server.pid, signal.SIGKILL)  # mid-reply: every stream has shown some of its text
        server.wait(30)
        for client in clients:
            client.join(30)
        streamed = {i for i, n in seen.items() if n}
        assert len(streamed) == STREAMS, seen
        by_id = check_log(data_dir / "personae.db", finished, [streamed])
        # No half-written reply: a reply is logged whole when it ends, so the killed ones are not there at all.
        turns = {row[0] for row in by_id.values() if row[1] == "user" and row[4] in {f"http:u{i}" for i in streamed}}
        assert len(turns) == STREAMS
        assert [row for row in by_id.values() if row[1] == "assistant" and row[3] in turns] == []

        server = start_server(smollm2_folder, data_dir, port)
        again = httpx.post(url + "/v1/chat/completions", timeout=120, headers={"x-personae-conversation": "u0"},
                           json={"model": "pixel", "max_tokens": 24, "user": "u0",
                                 "messages": [{"role": "user", "content": "Are you there?"}]})
        assert again.status_code == 200, again.text
        reply = json.loads(again.text)
        assert reply["personae_message_id"] > max(by_id) and reply["choices"][0]["message"]["content"].strip()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    with sqlite3.connect(data_dir / "personae.db") as db:
        assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
        logged = db.execute("select text from messages where id = ?", [reply["personae_message_id"]]).fetchone()
    assert logged[0] == reply["choices"][0]["message"]["content"]  # the reply after the restart, logged whole

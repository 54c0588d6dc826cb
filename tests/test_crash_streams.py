"""The server SIGKILLed while 20 replies stream: the log stays intact and the next server answers."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tiny_model_folder, data_dir: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "PERSONAE_BASE_MODEL": str(tiny_model_folder), "PERSONAE_DATA_DIR": str(data_dir),
           "PERSONAE_MAX_NEW_TOKENS": "400", "PYTHONPATH": str(ROOT)}
    log = open(data_dir.parent / f"server-{port}-{time.monotonic_ns()}.log", "wb")  # a file: a pipe could fill
    process = subprocess.Popen([sys.executable, "-m", "runtime", "serve", "--http", f"127.0.0.1:{port}",
                                "--no-scheduler"], env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(Path(log.name).read_text(errors="replace")[-3000:])
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.3)
    process.kill()
    raise AssertionError("the server did not start")


def stream(url: str, index: int, seen: dict) -> None:
    body = {"model": "pixel", "stream": True, "max_tokens": 400, "temperature": 1.0, "user": f"u{index}",
            "messages": [{"role": "user", "content": f"Tell me a long story number {index}"}]}
    try:
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as response:
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    seen[index] = seen.get(index, 0) + 1
    except httpx.HTTPError:
        pass  # the server died under us: expected


@pytest.mark.skipif(not os.environ.get("PERSONAE_STRESS"), reason="two server starts: run by `make stress`")
def test_sigkill_while_twenty_replies_stream(tiny_model_folder, isolated_environment):
    data_dir = isolated_environment / "data"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(tiny_model_folder, data_dir, port)
    finished = httpx.post(url + "/v1/chat/completions", timeout=60, json={
        "model": "pixel", "max_tokens": 5, "user": "before", "messages": [{"role": "user", "content": "Hi"}]}).json()
    seen: dict[int, int] = {}
    clients = [threading.Thread(target=stream, args=(url, i, seen), daemon=True) for i in range(20)]
    for client in clients:
        client.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sum(1 for n in seen.values() if n >= 3) < 10:
        time.sleep(0.05)
    assert sum(1 for n in seen.values() if n >= 3) >= 10, f"the replies never streamed: {seen}"
    os.kill(server.pid, signal.SIGKILL)
    server.wait(30)
    for client in clients:
        client.join(30)

    database = data_dir / "personae.db"
    with sqlite3.connect(database) as db:
        assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
        assert db.execute("pragma foreign_key_check").fetchall() == []
        rows = db.execute("select id, role, text, reply_to, user_id from messages order by id").fetchall()
    by_id = {row[0]: row for row in rows}
    # The reply finished before the kill is there, whole, with the user's message it answers.
    assert by_id[finished["personae_message_id"]][2] == finished["choices"][0]["message"]["content"]
    for message_id, role, text, reply_to, _ in rows:
        if role == "assistant" and reply_to is not None:
            assert reply_to in by_id and by_id[reply_to][1] == "user"  # no reply without its question
    users = [row for row in rows if row[1] == "user" and row[4].startswith("http:u")]
    assert len(users) == 20 and all(text.startswith("Tell me a long story number") for _, _, text, _, _ in users)

    # The next server opens the same log and answers; the interrupted conversations carry on.
    server = start_server(tiny_model_folder, data_dir, port)
    try:
        again = httpx.post(url + "/v1/chat/completions", timeout=60, headers={"x-personae-conversation": "u3"},
                           json={"model": "pixel", "max_tokens": 5, "user": "u3",
                                 "messages": [{"role": "user", "content": "Are you there?"}]})
        assert again.status_code == 200, again.text
        assert json.loads(again.text)["personae_message_id"] > max(by_id)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    with sqlite3.connect(database) as db:
        assert db.execute("pragma integrity_check").fetchone()[0] == "ok"

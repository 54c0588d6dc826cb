"""The server SIGKILLed while 20 replies stream, at random moments (1 in `make test`, 20 in `make stress`): each
time the log stays intact, nothing logged is lost or half-written, and the next server answers on it."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).parent.parent
MOMENTS = 20 if os.environ.get("PERSONAE_STRESS") else 1
SEED = int(os.environ.get("PERSONAE_CRASH_SEED") or time.time_ns() % 100_000)  # printed; set it to replay


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tiny_model_folder, data_dir: Path, port: int) -> subprocess.Popen:
    # A server slow to listen reports its stacks and the machine's pressure itself (`serve --startup-report`, every
    # 60 s); one still not listening at 300 s is sent SIGABRT (PYTHONFAULTHANDLER: every thread's stack, GIL or not).
    env = {**os.environ, "PERSONAE_BASE_MODEL": str(tiny_model_folder), "PERSONAE_DATA_DIR": str(data_dir),
           "PERSONAE_MAX_NEW_TOKENS": "400", "PYTHONPATH": str(ROOT), "PYTHONFAULTHANDLER": "1"}
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
    # How it waits (S: a lock or a socket; D: the disk, as when memory runs out) before its stacks (SIGABRT).
    status = Path(f"/proc/{process.pid}/status")
    state = [line for line in (status.read_text().splitlines() if status.exists() else [])
             if line.startswith(("State", "Threads", "VmRSS"))]
    process.send_signal(signal.SIGABRT)
    process.wait(30)
    text = Path(log.name).read_text(errors="replace")
    first = text.find("not listening after")  # the server's own report (every 60 s): stacks and memory pressure
    raise AssertionError(f"the server did not start in 300 s ({'; '.join(state)}); its first report:\n"
                         + (text[first:first + 6000] if first >= 0 else "(none)") + "\n... its log's end:\n"
                         + text[-6000:])


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


def kill_while_streaming(url: str, server, rng: random.Random, round_: int) -> tuple[dict, str]:
    """Start 20 streams and SIGKILL the server at a random moment: while the turns are being logged, at the
    first tokens, or deep into the replies. Returns how many chunks each stream saw and the moment's kind."""
    seen: dict[int, int] = {}
    clients = [threading.Thread(target=stream, args=(url, 100 * round_ + i, seen), daemon=True) for i in range(20)]
    kind = rng.choice(["early", "first tokens", "mid-stream"])
    started = time.monotonic()
    for client in clients:
        client.start()
    if kind == "early":
        time.sleep(rng.uniform(0, 0.5))
    else:
        wanted = (1, rng.randint(1, 5)) if kind == "first tokens" else (rng.randint(3, 15), rng.randint(5, 40))
        while time.monotonic() - started < 60 and sum(1 for n in seen.values() if n >= wanted[1]) < wanted[0]:
            time.sleep(0.02)
    os.kill(server.pid, signal.SIGKILL)
    server.wait(30)
    for client in clients:
        client.join(30)
    return dict(seen), kind


def check_log(database: Path, finished: dict, seen_by_round: list[set]) -> dict:
    """integrity_check ok; every reply whole with its question; every turn a client saw streaming is logged."""
    with sqlite3.connect(database) as db:
        assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
        assert db.execute("pragma foreign_key_check").fetchall() == []
        rows = db.execute("select id, role, text, reply_to, user_id from messages order by id").fetchall()
    by_id = {row[0]: row for row in rows}
    # The reply finished before the first kill is there, whole, with the user's message it answers.
    assert by_id[finished["personae_message_id"]][2] == finished["choices"][0]["message"]["content"]
    for _, role, text, reply_to, _ in rows:
        if role == "assistant" and reply_to is not None:
            assert reply_to in by_id and by_id[reply_to][1] == "user"  # no reply without its question
    # Whole: each turn of a stream's user is exactly what it sent (or the question asked after a restart).
    turns = [(row[4], row[2]) for row in rows if row[1] == "user" and row[4].startswith("http:u")]
    assert all(text in (f"Tell me a long story number {user[6:]}", "Are you there?") for user, text in turns)
    users = {user for user, _ in turns}
    # Not lost: a stream that got a chunk was answering a logged turn (the turn is logged before the reply).
    for seen in seen_by_round:
        assert {f"http:u{i}" for i in seen} <= set(users), seen
    return by_id


def test_sigkill_while_twenty_replies_stream(tiny_model_folder, isolated_environment):
    data_dir = isolated_environment / "data"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    rng, kinds, seen_by_round = random.Random(SEED), [], []
    print(f"\nstream crash seed {SEED}")
    server = start_server(tiny_model_folder, data_dir, port)
    finished = httpx.post(url + "/v1/chat/completions", timeout=60, json={
        "model": "pixel", "max_tokens": 5, "user": "before", "messages": [{"role": "user", "content": "Hi"}]}).json()
    try:
        for round_ in range(MOMENTS):
            seen, kind = kill_while_streaming(url, server, rng, round_)
            kinds.append((kind, sum(1 for n in seen.values() if n)))
            seen_by_round.append({i for i, n in seen.items() if n})
            by_id = check_log(data_dir / "personae.db", finished, seen_by_round)
            # The next server opens the same log and answers; an interrupted conversation carries on.
            server = start_server(tiny_model_folder, data_dir, port)
            user = f"u{100 * round_ + rng.randrange(20)}"
            again = httpx.post(url + "/v1/chat/completions", timeout=60, headers={"x-personae-conversation": user},
                               json={"model": "pixel", "max_tokens": 5, "user": user,
                                     "messages": [{"role": "user", "content": "Are you there?"}]})
            assert again.status_code == 200, again.text
            assert json.loads(again.text)["personae_message_id"] > max(by_id)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    with sqlite3.connect(data_dir / "personae.db") as db:
        assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
    print(f"streams killed at {MOMENTS} moments (kind, streams that had output): {kinds}")

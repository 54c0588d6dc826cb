"""Slowloris: many sockets that send their headers (or their body) a byte at a time and never finish, held open
while chat and /healthz keep answering (150 + 20 sockets for ~3 s in `make test`; 1,000 + 200 for 40 s in
`make stress`), and nothing of theirs logged; sockets whose headers take longer than [plugins.http]
max_header_seconds are closed, and bodies longer than max_body_seconds get a 408."""

from __future__ import annotations

import os
import socket
import threading
import time

import httpx
import pytest

STRESS = bool(os.environ.get("PERSONAE_STRESS"))
SLOW_HEADERS = 1000 if STRESS else 150  # never finish their headers
SLOW_BODIES = 200 if STRESS else 20  # full headers, then a body a byte at a time: each holds a request slot
HOLD_SECONDS = 40 if STRESS else 3
LIMIT = SLOW_BODIES + 30  # [plugins.http] max_concurrent_requests: room for the slow bodies and for chat


@pytest.fixture
def engine(make_engine, tiny_base):
    # The slow sockets are held the whole time here (deadlines past the hold); the tests below cut them off.
    return make_engine(tiny_base, temperature=0, max_new_tokens=3, plugins={"http": {
        "max_concurrent_requests": LIMIT, "max_body_seconds": HOLD_SECONDS + 60,
        "max_header_seconds": HOLD_SECONDS + 60}})


class Trickle:
    """Sockets fed one byte each per tick from one thread, until stop(); counts those the server closed."""

    def __init__(self, port: int, headers: int, bodies: int):
        self.sockets: list[tuple[socket.socket, bytes]] = []
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        for i in range(headers + bodies):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            if i < headers:
                s.sendall(head)  # and then one more header line, a byte at a time, forever
                rest = b"X-Slow: " + b"a" * 100_000
            else:
                s.sendall(head + b"Content-Length: 100000\r\n\r\n")
                rest = b'{"model": "pixel", "messages": [' + b" " * 100_000
            s.setblocking(False)
            self.sockets.append((s, rest))
        self.closed_by_server = 0
        self.ticks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        open_ = list(self.sockets)
        while not self._stop.wait(0.2):
            self.ticks += 1
            still = []
            for s, rest in open_:
                try:
                    s.send(rest[self.ticks % len(rest):][:1])
                    still.append((s, rest))
                except BlockingIOError:
                    still.append((s, rest))
                except OSError:
                    self.closed_by_server += 1
            open_ = still

    def halt(self) -> None:
        """Stop feeding the sockets (they stay open)."""
        self._stop.set()
        self._thread.join(10)

    def stop(self) -> None:
        self.halt()
        for s, _ in self.sockets:
            s.close()


def test_slow_sockets_held_open_while_chat_and_healthz_answer(server, engine):
    before = engine.store.query("select count(*) as n from messages")[0]["n"]
    trickle = Trickle(server.port, SLOW_HEADERS, SLOW_BODIES)
    answered, probes = [], []
    try:
        deadline = time.monotonic() + HOLD_SECONDS
        with httpx.Client(base_url=server.url, timeout=120) as client:
            while time.monotonic() < deadline or len(answered) < 3:
                health = client.get("/healthz")
                probes.append(health.status_code)
                reply = client.post("/v1/chat/completions", json={
                    "model": "pixel", "max_tokens": 3, "temperature": 0, "user": f"fast{len(answered)}",
                    "messages": [{"role": "user", "content": "Hi"}]})
                answered.append(reply.status_code)
        assert trickle.ticks >= HOLD_SECONDS * 2  # the slow sockets were fed throughout
        held = admission_of(server.app).in_progress  # the slow bodies hold their request slots meanwhile
    finally:
        trickle.stop()
    print(f"\nslowloris: {SLOW_HEADERS} slow headers + {SLOW_BODIES} slow bodies held {HOLD_SECONDS} s; "
          f"chat {len(answered)} answered ({set(answered)}), /healthz {len(probes)} ({set(probes)}); "
          f"{trickle.closed_by_server} slow sockets closed by the server")
    assert set(answered) == {200} and set(probes) == {200}
    assert held >= SLOW_BODIES
    # Logged: the fast chats, each a turn and a reply (plus greetings); nothing of a request never finished.
    users = {row["user_id"] for row in engine.store.query("select distinct user_id from messages where role = 'user'")}
    assert users == {f"http:fast{i}" for i in range(len(answered))}
    assert engine.store.query("select count(*) as n from messages")[0]["n"] > before
    # The slow bodies gave their request slots back once their sockets closed.
    admission = admission_of(server.app)
    deadline = time.monotonic() + 30
    while admission.in_progress and time.monotonic() < deadline:
        time.sleep(0.1)
    assert admission.in_progress == 0


def admission_of(app):
    """The app's Admission middleware (plugins/http/admission.py), found down the built middleware stack."""
    from plugins.http.admission import Admission

    layer = app.middleware_stack
    while layer is not None and not isinstance(layer, Admission):
        layer = getattr(layer, "app", None)
    assert layer is not None
    return layer


def test_slow_bodies_taking_every_request_slot_get_a_408_and_chat_answers_again(make_engine, tiny_base):
    from http_server import LiveServer

    slots = 8
    engine = make_engine(tiny_base, temperature=0, max_new_tokens=3, plugins={"http": {
        "max_concurrent_requests": slots, "max_body_seconds": 2}})
    live = LiveServer(engine)
    trickle = Trickle(live.port, 0, slots)  # as many slow bodies as there are request slots
    try:
        time.sleep(0.5)
        chat = {"model": "pixel", "max_tokens": 3, "temperature": 0, "messages": [{"role": "user", "content": "Hi"}]}
        during = httpx.post(live.url + "/v1/chat/completions", json=chat, timeout=60)
        assert during.status_code == 503  # every slot held by a body arriving a byte at a time
        # Within max_body_seconds each slow body is answered 408 and its connection closed: the slots come back.
        time.sleep(2.5)
        trickle.halt()
        answers = [read_to_the_end(s) for s, _ in trickle.sockets]
        assert all(a.startswith("HTTP/1.1 408 ") and "body_timeout" in a and "max_body_seconds" in a
                   for a in answers), answers
        after = httpx.post(live.url + "/v1/chat/completions", json=chat, timeout=60)
        assert after.status_code == 200, after.text
    finally:
        trickle.stop()
        live.close()
    # Logged: the one chat answered; nothing of the refused one or of the slow bodies.
    asked = engine.store.query("select user_id, text from messages where role = 'user'")
    assert asked == [{"user_id": "http:anonymous", "text": "Hi"}]


def test_headers_not_complete_in_max_header_seconds_are_closed(make_engine, tiny_base):
    from http_server import LiveServer

    engine = make_engine(tiny_base, temperature=0, max_new_tokens=3, plugins={"http": {"max_header_seconds": 1}})
    live = LiveServer(engine)
    trickle = Trickle(live.port, 20, 0)
    try:
        # A client that sends its request at once is answered, each time (an idle connection it kept may be closed
        # meanwhile, as keep-alive does after 5 s: httpx then opens another).
        with httpx.Client(base_url=live.url, timeout=30) as client:
            first = client.get("/healthz")
            time.sleep(1.5)
            second = client.post("/v1/chat/completions", json={
                "model": "pixel", "max_tokens": 3, "messages": [{"role": "user", "content": "Hi"}]})
        assert first.status_code == second.status_code == 200
        trickle.halt()
        # uvicorn alone keeps these open forever (0 of 1,200 closed in 40 s before): now closed, nothing answered.
        assert [read_to_the_end(s) for s, _ in trickle.sockets] == [""] * 20
        assert httpx.get(live.url + "/healthz", timeout=30).status_code == 200
    finally:
        trickle.stop()
        live.close()


def read_to_the_end(s: socket.socket) -> str:
    """What the server sent before it closed the connection (waiting up to 30 s for it to close)."""
    s.setblocking(True)
    s.settimeout(30)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass  # closed with our unread bytes in its buffer: a reset after the answer
    return data.decode("latin-1")

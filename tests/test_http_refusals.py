"""HTTP 429/503 refusals are counted in the real SQLite file (http_refusals), without text or keys, within
bounds: no database work on the request's path, a bounded number of counters, 7 days kept."""

from __future__ import annotations

import asyncio
import collections
import sqlite3
import threading

import httpx

from plugins.http import refusals as refusals_module
from plugins.http.refusals import RefusalLog

SECRET_TEXT = "my very private question 7d1f"
KEY = "sk-refusal-test-key-3b9a"


def rows(database) -> list[dict]:
    with sqlite3.connect(database) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("select * from http_refusals order by minute, status, route")]


def test_a_full_queue_is_logged_as_429s_in_the_sqlite_file_without_text_or_key(make_engine, tiny_base,
                                                                                  monkeypatch):
    from http_server import LiveServer

    from runtime.generation.batching import BatchingGenerator
    from runtime.generation.types import Request, SamplingSettings

    monkeypatch.setenv("PERSONAE_API_KEYS", KEY)
    generator = BatchingGenerator(tiny_base.model, tiny_base.tokenizer, max_queue=1)
    generator.close()  # a stopped worker never takes requests off its queue: one request fills it
    generator.submit(Request([1], SamplingSettings()))
    engine = make_engine(tiny_base, generator=generator)
    live = LiveServer(engine, keys=[KEY])
    statuses = []
    try:
        for stream in (False, True, False, True, False, True):
            response = httpx.post(live.url + "/v1/chat/completions", timeout=60,
                                  headers={"authorization": f"Bearer {KEY}"},
                                  json={"model": "pixel", "stream": stream, "user": "alice",
                                        "messages": [{"role": "user", "content": SECRET_TEXT}]})
            statuses.append(response.status_code)
    finally:
        live.close()  # the app's shutdown stores what was counted since the last flush
    assert statuses == [429] * 6
    database = engine.settings.db_path
    logged = rows(database)
    assert {(r["status"], r["code"], r["route"], r["character"]) for r in logged} == {
        (429, "server_busy", "/v1/chat/completions", "pixel")}
    assert sum(r["count"] for r in logged) == 6  # every refusal the clients saw, none twice
    with sqlite3.connect(database) as db:
        dump = "\n".join(db.iterdump())
        assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
        migrations = db.execute("select name from _sqlite_migrations where migration_set = 'personae.http'").fetchall()
    assert migrations == [("m001_http_refusals",)]
    assert SECRET_TEXT not in dump and KEY not in dump and "alice" not in dump  # nor logged as a turn


def test_requests_over_the_concurrency_limit_are_logged_as_503s(make_engine, tiny_base):
    from plugins.http.admission import Admission

    engine = make_engine(tiny_base)
    log = RefusalLog(engine.store)
    release = asyncio.Event()

    async def slow_app(scope, receive, send):  # a long stream holding its place
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    async def request(admission, path):
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message):
            sent.append(message)

        await admission({"type": "http", "path": path, "headers": []}, receive, send)
        return sent[0]["status"]

    async def scenario():
        admission = Admission(slow_app, limit=1, refusals=log)
        held = asyncio.create_task(request(admission, "/v1/chat/completions"))
        await asyncio.sleep(0.05)
        refused = [await request(admission, path) for path in
                   ["/v1/chat/completions"] * 3 + ["/v1/models", "/v1/characters/pixel/../../etc/passwd"]]
        release.set()
        return await held, refused

    held, refused = asyncio.run(scenario())
    log.close()
    assert held == 200 and refused == [503] * 5
    counted = collections.Counter()
    for r in rows(engine.settings.db_path):  # summed over minutes: the test may straddle one
        counted[(r["status"], r["code"], r["route"], r["character"])] += r["count"]
    # A path the client made up is never stored: it counts under "other".
    assert counted == {(503, "server_busy", "/v1/chat/completions", ""): 3, (503, "server_busy", "/v1/models", ""): 1,
                       (503, "server_busy", "other", ""): 1}


def test_counting_never_waits_on_the_database_and_a_flood_is_a_few_rows(make_engine, tiny_base, monkeypatch):
    engine = make_engine(tiny_base)
    monkeypatch.setattr(refusals_module, "MAX_KEYS", 50)
    log = RefusalLog(engine.store)
    counted = threading.Event()

    def flood():
        for i in range(20_000):
            log.record(429, "server_busy", "/v1/chat/completions", f"character-{i % 200}")
        counted.set()

    # The log is held by another writer the whole time: the flood is counted regardless (record does no I/O).
    with engine.store._lock:
        threading.Thread(target=flood, daemon=True).start()
        assert counted.wait(60), "record() waited on the database"
    log.close()
    logged = rows(engine.settings.db_path)
    assert sum(r["count"] for r in logged) == 20_000
    # 200 characters but at most MAX_KEYS counters per flush: the rest under route "other".
    assert len({(r["route"], r["character"]) for r in logged}) <= 51
    assert {r["route"] for r in logged} == {"/v1/chat/completions", "other"}


def test_refusals_older_than_seven_days_are_dropped_as_new_ones_come(make_engine, tiny_base):
    engine = make_engine(tiny_base)
    log = RefusalLog(engine.store)
    engine.store.apply_migrations(refusals_module.migrations)  # as a server that refused requests last week
    engine.store.write(lambda: engine.store.db.execute(
        "insert into http_refusals values ('2000-01-01T00:00Z', 503, 'server_busy', '/v1/models', '', 9), "
        f"('{refusals_module.minute_now()}', 429, 'server_busy', '/v1/models', 'pixel', 2)"))
    log.record(429, "server_busy", "/v1/models", "pixel")
    log.close()
    kept = rows(engine.settings.db_path)
    assert all(r["minute"] > "2000" and r["status"] == 429 for r in kept) and sum(r["count"] for r in kept) == 3

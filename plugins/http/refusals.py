"""HTTP requests refused with 429/503, counted per minute in SQLite (table http_refusals): when, status, code,
route and character; never a message, a key or who asked."""

from __future__ import annotations

import collections
import logging
import threading
from datetime import datetime, timedelta, timezone

import sqlite_utils
from sqlite_utils import Migrations

migrations = Migrations("personae.http")
log = logging.getLogger("personae.http")


@migrations(name="m001_http_refusals")
def m001_http_refusals(db: sqlite_utils.Database) -> None:
    """Refused requests counted per (minute, status, code, route, character): a flood is a few rows, not millions."""
    db["http_refusals"].create({"minute": str, "status": int, "code": str, "route": str, "character": str,
                                "count": int}, pk=("minute", "status", "code", "route", "character"))


REFUSALS_KEPT = timedelta(days=7)  # as Discord's refusals: an account of floods, not a history
FLUSH_SECONDS = 1.0  # one transaction a second at most, however many requests are refused
MAX_KEYS = 1_000  # distinct counters held between flushes; past it they are counted under route "other"
ROUTES = frozenset({"/v1/chat/completions", "/v1/regenerate", "/v1/feedback", "/v1/models", "/v1/characters",
                    "/metrics", "/"})


def route_of(path: str) -> str:
    """The route a refusal is counted under: a known path, else "other" (a client's paths are not stored)."""
    return path if path in ROUTES else "other"


def minute_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%MZ")


class RefusalLog:
    """Counts refusals in memory (no I/O on the request's path) and adds them to SQLite once a second."""

    def __init__(self, store):
        self.store = store
        self._migrated = False  # the table is made by the first flush: no database work while the server starts
        self._counts: collections.Counter = collections.Counter()
        self._lock = threading.Lock()  # only ever held for a dict update or a swap: never across I/O
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None

    def record(self, status: int, code: str | None, route: str, character: str | None = None) -> None:
        """Count one refusal; the writer thread stores it within FLUSH_SECONDS."""
        key = (minute_now(), int(status), code or "", route_of(route), character or "")
        with self._lock:
            if key not in self._counts and len(self._counts) >= MAX_KEYS:
                key = (key[0], key[1], key[2], "other", "")
            self._counts[key] += 1
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="personae-http-refusals", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(FLUSH_SECONDS)
            self.flush()

    def flush(self) -> int:
        """Add what was counted since the last flush in one transaction; drop rows past REFUSALS_KEPT."""
        with self._lock:
            counts, self._counts = self._counts, collections.Counter()
        if not counts:
            return 0
        cutoff = (datetime.now(timezone.utc) - REFUSALS_KEPT).strftime("%Y-%m-%dT%H:%MZ")
        rows = [(*key, n) for key, n in counts.items()]

        def write():
            db = self.store.db
            db.execute("delete from http_refusals where minute < ?", [cutoff])
            db.conn.executemany(
                "insert into http_refusals (minute, status, code, route, character, count) values (?, ?, ?, ?, ?, ?) "
                "on conflict (minute, status, code, route, character) do update set count = count + excluded.count",
                rows)
        try:
            if not self._migrated:
                self.store.apply_migrations(migrations)
                self._migrated = True
            self.store.write(write)
        except Exception:  # an account of refusals must never take the server down
            log.warning("could not log %d refused requests", sum(counts.values()), exc_info=True)
            return 0
        return len(rows)

    def close(self) -> None:
        """Stop the writer and store what is left."""
        self._closed = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
        self.flush()

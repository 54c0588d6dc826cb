"""Sliding-window rate limits per user and per channel, with one polite warning per window."""

from __future__ import annotations

import math
import time
from collections import deque


class RateLimiter:
    """At most `limit` events per `period` seconds for each key; limit 0 turns it off.

    Keys idle for a whole period are forgotten (swept at most once a period), so memory follows the users
    active in the last two periods, not every user ever seen.
    """

    def __init__(self, limit: int, period: float = 60.0, clock=time.monotonic):
        self.limit, self.period, self.clock = int(limit), float(period), clock
        self._events: dict[str, deque] = {}
        self._warned_until: dict[str, float] = {}
        self._swept_at = clock()

    def __len__(self) -> int:
        """Keys remembered now."""
        return len(self._events.keys() | self._warned_until.keys())

    def hit(self, key: str) -> int:
        """Count one event; return 0 if allowed, else whole seconds until the next one is."""
        if self.limit <= 0:
            return 0
        now = self.clock()
        self._sweep(now)
        events = self._events.setdefault(key, deque())
        while events and now - events[0] >= self.period:
            events.popleft()
        if len(events) >= self.limit:
            return max(1, math.ceil(self.period - (now - events[0])))
        events.append(now)
        return 0

    def should_warn(self, key: str, retry_after: float) -> bool:
        """Whether to answer a limited user now (once per blocked window, so warnings can't spam)."""
        now = self.clock()
        if self._warned_until.get(key, 0) > now:
            return False
        self._warned_until[key] = now + retry_after
        return True

    def _sweep(self, now: float) -> None:
        """Forget keys with no event in the last period and no warning still running (O(keys), once a period)."""
        if now - self._swept_at < self.period:
            return
        self._swept_at = now
        # A key's newest event is its last; older than a period, it no longer counts against anyone.
        self._events = {k: v for k, v in self._events.items() if v and now - v[-1] < self.period}
        self._warned_until = {k: until for k, until in self._warned_until.items() if until > now}

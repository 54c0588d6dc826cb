"""Sliding-window rate limits per user and per channel, with one polite warning per window."""

from __future__ import annotations

import math
import time
from collections import defaultdict, deque


class RateLimiter:
    """At most `limit` events per `period` seconds for each key; limit 0 turns it off."""

    def __init__(self, limit: int, period: float = 60.0, clock=time.monotonic):
        self.limit, self.period, self.clock = int(limit), float(period), clock
        self._events: dict[str, deque] = defaultdict(deque)
        self._warned_until: dict[str, float] = {}

    def hit(self, key: str) -> int:
        """Count one event; return 0 if allowed, else whole seconds until the next one is."""
        if self.limit <= 0:
            return 0
        now = self.clock()
        events = self._events[key]
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

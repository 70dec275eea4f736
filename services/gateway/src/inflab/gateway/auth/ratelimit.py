"""Sign-in and registration rate limits: a sliding window of attempts per key (an email,
a client address). In memory, so per gateway replica: a client spreading attempts over
N replicas gets at most N times the allowance, which still stops guessing."""

from __future__ import annotations

import math
import time
from collections import defaultdict, deque


class RateLimited(Exception):
    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"too many attempts; retry in {retry_after_s:.0f} s")
        self.retry_after_s = retry_after_s


class SlidingWindow:
    def __init__(self, limit: int, window_s: float, clock=time.monotonic) -> None:
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self._hits: dict[str, deque[float]] = defaultdict(deque)

    def _recent(self, key: str) -> deque[float]:
        hits = self._hits.get(key, deque())
        horizon = self.clock() - self.window_s
        while hits and hits[0] <= horizon:
            hits.popleft()
        if not hits:
            self._hits.pop(key, None)  # the table keeps only keys with recent attempts
        return hits

    def check(self, *keys: str) -> None:
        """Raise :class:`RateLimited` if any key has used its allowance."""
        for key in keys:
            hits = self._recent(key)
            if len(hits) >= self.limit:
                raise RateLimited(max(math.ceil(hits[0] + self.window_s - self.clock()), 1))

    def hit(self, *keys: str) -> None:
        now = self.clock()
        for key in keys:
            hits = self._recent(key)
            hits.append(now)
            self._hits[key] = hits

    def reset(self, key: str) -> None:
        self._hits.pop(key, None)

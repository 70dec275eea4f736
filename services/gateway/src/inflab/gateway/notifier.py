"""In-process wake-ups for SSE streams: the persister pokes a run after each commit, and
every stream following that run re-reads Postgres.

A poke carries no data on purpose. Postgres stays the only source of events, so a stream
cannot skip or repeat one, whether it was poked, timed out, or reconnected to another
replica; a lost poke only delays an event until the next heartbeat.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from uuid import UUID


class RunNotifier:
    def __init__(self) -> None:
        self._waiters: defaultdict[UUID, set[asyncio.Event]] = defaultdict(set)
        self.closed = False

    @contextmanager
    def subscribe(self, run_id: UUID) -> Iterator[asyncio.Event]:
        """An event that is set whenever ``run_id`` has new rows. Clear it *before*
        reading, so a poke that lands during the read is not lost."""
        poked = asyncio.Event()
        if self.closed:
            poked.set()
        self._waiters[run_id].add(poked)
        try:
            yield poked
        finally:
            waiters = self._waiters.get(run_id)
            if waiters is not None:
                waiters.discard(poked)
                if not waiters:
                    del self._waiters[run_id]

    def notify(self, run_id: UUID) -> None:
        for poked in self._waiters.get(run_id, ()):
            poked.set()

    def close(self) -> None:
        """Wake every stream so it can end (the app is shutting down)."""
        self.closed = True
        for waiters in self._waiters.values():
            for poked in waiters:
                poked.set()

    def subscribers(self, run_id: UUID) -> int:
        return len(self._waiters.get(run_id, ()))

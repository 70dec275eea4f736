"""Handing queued runs to the trainers: the run table is the outbox, and this is its relay.

Starting a run commits its row with ``dispatched_at`` NULL and nothing else; the
dispatcher then publishes the train request (message id = run id) and sets
``dispatched_at``. So a gateway that dies between the commit and the publish loses
nothing: the run is still in Postgres, waiting, and the next dispatcher round (this
replica restarted, or another) publishes it. One that dies between the publish and
setting ``dispatched_at`` publishes again; JetStream drops the repeat within its
duplicate window, and a trainer that gets a finished training again only re-publishes its
next stages.

Why Postgres rather than JetStream decides the order: a JetStream consumer delivers in
stream order, so one user's 50 runs published first would all train before another's one.
Per-user subjects with a consumer that rotates over them would need a consumer per user,
made and removed as users come and go. Here at most ``dispatch_max_waiting`` runs wait in
JetStream for a trainer; the rest wait in Postgres, and each free place goes to the run
whose owner has the fewest runs in training or waiting for a trainer (counting the run's
place in its owner's own queue), the oldest first among equals: round-robin by user, with
no user able to fill the queue. A place frees when a trainer reports the run ``running``,
or the run ends.

Replicas: each runs a dispatcher; a transaction-level advisory lock per queue lets one at
a time hand out places. Wake-ups are local (a run queued, a status stored, a cancel) with
a periodic round (``dispatch_interval_s``) in case the lock holder was another replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
from datetime import datetime, timezone
from uuid import UUID

from nats.errors import MaxPayloadError
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inflab.core.bus import TRANSIENT_ERRORS, Bus
from inflab.core.db.models import Run
from inflab.core.messages import RunSpec, TrainRequest
from inflab.core.settings import Settings
from inflab.gateway.dbwait import database_unreachable
from inflab.gateway.notifier import RunNotifier
from inflab.gateway.persistence import finish_run

log = logging.getLogger(__name__)

#: The first key of the dispatcher's advisory lock (the second is the queue's hash).
LOCK_CLASS = 0x1AB0D15

# Runs of the queue that a trainer holds or will hold next, per owner, and the runs
# waiting in Postgres in their owner's order; each free place goes to the smallest
# (owner's runs at work + place in the owner's queue), the oldest first among equals.
_FAIR_ORDER = text(
    """
    WITH at_work AS (
        SELECT owner_id, count(*) AS n FROM runs
        WHERE dispatch_queue = :queue AND dispatched_at IS NOT NULL AND status IN ('queued', 'running')
          AND coalesce(stages->>'train', 'queued') NOT IN ('completed', 'failed', 'cancelled')
        GROUP BY owner_id
    ), waiting AS (
        SELECT id, owner_id, created_at,
               row_number() OVER (PARTITION BY owner_id ORDER BY created_at, id) AS place
        FROM runs
        WHERE dispatch_queue = :queue AND status = 'queued' AND dispatched_at IS NULL
    )
    SELECT w.id FROM waiting w LEFT JOIN at_work a ON a.owner_id = w.owner_id
    ORDER BY coalesce(a.n, 0) + w.place, w.created_at, w.id
    LIMIT :places
    """
)


def _lock_key(queue: str) -> int:
    # A stable 31-bit hash (Python's hash() differs per process).
    return int.from_bytes(hashlib.sha256(queue.encode()).digest()[:4], "big") & 0x7FFFFFFF


def kill_after_commit_if_asked(settings: Settings) -> None:
    """The fault hook of the outbox test: die right after a run's commit, as a power cut would."""
    if settings.test_fault_kill_after_run_commit:
        log.error("test fault hook: SIGKILL after the run's commit")
        os.kill(os.getpid(), signal.SIGKILL)


class Dispatcher:
    def __init__(
        self,
        bus: Bus,
        sessionmaker: async_sessionmaker[AsyncSession],
        notifier: RunNotifier,
        settings: Settings,
    ) -> None:
        self.bus = bus
        self.sessionmaker = sessionmaker
        self.notifier = notifier
        self.settings = settings
        self.queue = settings.subject_prefix
        self._wake = asyncio.Event()
        #: The last round found no free place in JetStream.
        self._full = False

    def poke(self) -> None:
        """Look for runs to hand on now (a place may have freed)."""
        self._wake.set()

    def poke_queued(self) -> None:
        """A run was queued: worth a round only if the last one left a place free (a new
        run cannot free one). Under a burst of submissions this spares a round per run;
        a freed place pokes with :meth:`poke`."""
        if not self._full:
            self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch until ``stop``: at every poke, and every ``dispatch_interval_s``."""
        pause = 0.0
        while not stop.is_set():
            if pause:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), pause)
            self._wake.clear()
            if stop.is_set():
                break
            try:
                dispatched = await self.dispatch_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if database_unreachable(exc):
                    log.warning("dispatcher: Postgres unreachable (%s); retrying", type(exc).__name__)
                else:
                    log.exception("dispatcher round failed; retrying")
                pause = min(max(pause * 2, 0.5), self.settings.dispatch_interval_s)
                continue
            # Something handed on: there may be more (another replica's runs, freed places).
            pause = 0.0 if dispatched else self.settings.dispatch_interval_s

    async def dispatch_once(self) -> int:
        """One round: fill the free places in JetStream in fair order. The number of runs
        published (0 when another replica holds the queue's lock, or NATS is away)."""
        async with self.sessionmaker() as session, session.begin():
            locked = await session.scalar(
                select(func.pg_try_advisory_xact_lock(LOCK_CLASS, _lock_key(self.queue)))
            )
            if not locked:
                return 0
            waiting = await session.scalar(
                select(func.count()).select_from(Run).where(
                    Run.dispatch_queue == self.queue, Run.status == "queued", Run.dispatched_at.is_not(None)
                )
            )
            places = self.settings.dispatch_max_waiting - waiting
            self._full = places <= 0
            if places <= 0:
                return 0
            ids = list(await session.scalars(_FAIR_ORDER, {"queue": self.queue, "places": places}))
            dispatched, failed = 0, []
            for run_id in ids:
                outcome = await self._publish(session, run_id)
                if outcome is None:
                    break  # NATS away: what is published so far is marked; the rest waits
                if outcome:
                    dispatched += 1
                else:
                    failed.append(run_id)
        for run_id in failed:
            self.notifier.notify(run_id)
        return dispatched

    async def _publish(self, session: AsyncSession, run_id: UUID) -> bool | None:
        """Publish one run's train request and mark it dispatched: True; a run that cannot
        be published at all (too large for NATS) is failed instead: False; NATS away: None."""
        run = await session.get(Run, run_id, with_for_update=True, populate_existing=True)
        if run is None or run.status != "queued" or run.dispatched_at is not None:
            return False  # cancelled meanwhile
        try:
            request = TrainRequest(run_id=run.id, owner_id=run.owner_id, spec=RunSpec.model_validate(run.config))
            # Signed (only the gateway can), message id = run id.
            await self.bus.publish_request("train", request, msg_id=str(run.id))
        except TRANSIENT_ERRORS as exc:
            log.warning("dispatcher: could not publish run %s (%r); it stays queued", run.id, exc)
            return None
        except Exception as exc:
            reason = (f"the run's train request is over the NATS server's max_payload ({self.bus.nc.max_payload} "
                      "bytes)" if isinstance(exc, MaxPayloadError) else repr(exc))
            log.error("dispatcher: run %s cannot be queued: %s", run.id, reason)
            await finish_run(session, run, "failed", datetime.now(timezone.utc), f"could not queue the run: {reason}")
            return False
        await session.execute(update(Run).where(Run.id == run.id).values(dispatched_at=func.now()))
        log.info("run %s handed to the trainers", run.id)
        return True

"""A run's event stream as Server-Sent Events, read from Postgres.

Each frame is ``id: <run_events.id>``, ``event: <kind>``, ``data: <the event's JSON>``. A
stream starts after the id the client names (``Last-Event-ID`` or ``?after=``), sends what
is stored, then waits for the persister's poke or a heartbeat and reads again: Postgres is
the only source, so reconnects, gateway restarts and replicas lose nothing. The stream
ends after the run-level terminal status event (or, for an ended run, once no
validation of it is under way), or once the session or API token that
opened it has ended (checked every heartbeat interval, busy or not).

A plain async generator under ``StreamingResponse``: measured about half the per-event
cost of sse-starlette on this hardware (GROUND.md).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from uuid import UUID

from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inflab.common.db.models import Run, RunEventRow, Validation
from inflab.gateway.notifier import RunNotifier
from inflab.gateway.run_state import TERMINAL

#: Rows read per query, so a long backlog is sent in bounded slices.
BATCH = 500
HEARTBEAT = b": keep-alive\n\n"
#: What :func:`read_events` reports for an ended run with a validation under way: the
#: stream stays open for the validation's events.
VALIDATING = "validating"
#: The largest event id Postgres can hold (bigint); a client's larger one means "the end".
MAX_EVENT_ID = 2**63 - 1


@dataclass(frozen=True)
class StoredEvent:
    id: int
    kind: str
    stage: str
    payload: dict

    @property
    def ends_run(self) -> bool:
        return self.kind == "status" and self.stage == "run" and self.payload.get("status") in TERMINAL

    def frame(self) -> bytes:
        # json.dumps escapes newlines, so the data is always one ``data:`` line.
        data = json.dumps(self.payload, separators=(",", ":"), ensure_ascii=False)
        return f"id: {self.id}\nevent: {self.kind}\ndata: {data}\n\n".encode()


async def validation_under_way(session: AsyncSession, run_id: UUID) -> bool:
    return await session.scalar(
        select(exists().where(Validation.run_id == run_id, Validation.status.in_(("queued", "running"))))
    )


async def read_events(session: AsyncSession, run_id: UUID, after: int) -> tuple[str | None, list[StoredEvent]]:
    """The run's status, then its events after ``after``. Status first: if it reads
    terminal, the terminal event (committed with it) is visible to the second read."""
    status = await session.scalar(select(Run.status).where(Run.id == run_id))
    if status in TERMINAL and await validation_under_way(session, run_id):
        status = VALIDATING  # an ended run whose validation still sends events
    rows = await session.execute(
        select(RunEventRow.id, RunEventRow.kind, RunEventRow.stage, RunEventRow.payload)
        .where(RunEventRow.run_id == run_id, RunEventRow.id > after)
        .order_by(RunEventRow.id)
        .limit(BATCH)
    )
    return status, [StoredEvent(*row) for row in rows]


async def run_event_stream(
    sessionmaker: async_sessionmaker[AsyncSession],
    notifier: RunNotifier,
    run_id: UUID,
    after: int,
    heartbeat_s: float,
    still_allowed: Callable[[], Awaitable[bool]] | None = None,
) -> AsyncIterator[bytes]:
    last = after
    checked = time.monotonic()
    with notifier.subscribe(run_id) as poked:
        while not notifier.closed:
            if still_allowed is not None and time.monotonic() - checked >= heartbeat_s:
                if not await still_allowed():
                    return  # signed out, revoked or expired: the client must sign in again
                checked = time.monotonic()
            poked.clear()
            # A short session per read: an idle stream holds no database connection.
            async with sessionmaker() as session:
                status, events = await read_events(session, run_id, last)
            for event in events:
                yield event.frame()
                last = event.id
                if event.ends_run:
                    return
            if len(events) == BATCH:
                continue
            if not events and (status is None or status in TERMINAL):
                return  # everything up to and past the end was sent (or the run is gone)
            try:
                await asyncio.wait_for(poked.wait(), heartbeat_s)
            except TimeoutError:
                # Keeps proxies from closing an idle stream; also the periodic re-read
                # that catches events stored by another replica.
                yield HEARTBEAT

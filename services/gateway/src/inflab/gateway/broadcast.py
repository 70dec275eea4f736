"""SSE fan-out: one reader per followed run per gateway process, broadcasting in process.

Each run some client follows has one :class:`RunFeed` on this replica. When the run's
events change (the persister's poke, on this replica or through NATS from another) or
a heartbeat passes, the feed reads the run's new events from Postgres once, encodes each
frame once, and hands them to every subscriber's inbox. Postgres stays the only source,
so replicas, restarts and reconnects (``Last-Event-ID``) lose nothing: a subscriber that
joins, resumes from an older id or falls too far behind gets what it lacks from the
feed's memory of the run's last events, or else reads it from Postgres itself, up to
where the feed is, then takes the feed's frames from there. A stream takes everything
its feed delivered since it last looked as one chunk, so a busy replica writes fewer,
larger chunks instead of falling further behind. A session's or token's validity is
re-checked once per heartbeat interval however many streams it holds open.

Open streams are capped per user on each replica (``INFLAB_SSE_MAX_STREAMS_PER_USER``):
one more is refused (429) rather than let one account hold every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter as Tally
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from uuid import UUID

from sqlalchemy import exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.responses import StreamingResponse

from inflab.core.db.models import Run, RunEventRow, Validation
from inflab.core.vocabulary import ACTIVE_VALIDATION_STATUSES, TERMINAL_STATUSES
from inflab.gateway.notifier import RunNotifier

log = logging.getLogger(__name__)

#: Rows read per query, so a long backlog is sent in bounded slices.
BATCH = 500
HEARTBEAT = b": keep-alive\n\n"
#: The status :func:`read_events` reports for an ended run with a validation under way:
#: its streams stay open for the validation's events.
VALIDATING = "validating"
#: The largest event id Postgres can hold (bigint); a client's larger one means "the end".
MAX_EVENT_ID = 2**63 - 1
#: Feed reads a subscriber may have waiting before it is cut loose to catch up from
#: Postgres on its own (a slow client must not grow the gateway's memory without bound).
MAX_QUEUED_READS = 256


@dataclass(frozen=True)
class StoredEvent:
    id: int
    kind: str
    stage: str
    payload: dict
    #: The SSE frame, encoded once however many clients it goes to.
    frame: bytes = field(repr=False, default=b"")

    @classmethod
    def of(cls, id: int, kind: str, stage: str, payload: dict) -> "StoredEvent":
        # json.dumps escapes newlines, so the data is always one ``data:`` line.
        data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        return cls(id, kind, stage, payload, f"id: {id}\nevent: {kind}\ndata: {data}\n\n".encode())

    @property
    def ends_run(self) -> bool:
        return self.kind == "status" and self.stage == "run" and self.payload.get("status") in TERMINAL_STATUSES


async def validation_under_way(session: AsyncSession, run_id: UUID) -> bool:
    return await session.scalar(
        select(exists().where(Validation.run_id == run_id, Validation.status.in_(ACTIVE_VALIDATION_STATUSES)))
    )


async def read_events(session: AsyncSession, run_id: UUID, after: int,
                      upto: int = MAX_EVENT_ID) -> tuple[str | None, list[StoredEvent]]:
    """The run's status, then its events in ``(after, upto]`` (at most :data:`BATCH`).
    Status first: if it reads terminal, the terminal event (committed with it) is visible
    to the second read."""
    status = await session.scalar(select(Run.status).where(Run.id == run_id))
    if status in TERMINAL_STATUSES and await validation_under_way(session, run_id):
        status = VALIDATING  # an ended run whose validation still sends events
    rows = await session.execute(
        select(RunEventRow.id, RunEventRow.kind, RunEventRow.stage, RunEventRow.payload)
        .where(RunEventRow.run_id == run_id, RunEventRow.id > after, RunEventRow.id <= upto)
        .order_by(RunEventRow.id)
        .limit(BATCH)
    )
    return status, [StoredEvent.of(*row) for row in rows]


class TooManyStreams(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"too many open event streams for this account on this server (at most {limit}, "
                         "INFLAB_SSE_MAX_STREAMS_PER_USER): close one first")


#: What a feed hands its subscribers: the run's status and the events of one read; BEAT
#: when the run has been quiet for a heartbeat interval; None when the stream must end.
Delivery = tuple[str | None, list[StoredEvent]] | None
BEAT: Delivery = ("", [])
#: Events a feed keeps in memory, so a stream joining or resuming near the end catches
#: up without reading Postgres.
RECENT = 1000


class Subscriber:
    """One stream's inbox: what the feed delivered since the stream last looked, taken all
    at once (a stream that was slow to look sends it as one chunk)."""

    def __init__(self) -> None:
        self.pending: list[Delivery] = []
        self.wake = asyncio.Event()
        #: Set when too much waited and was dropped: catch up from Postgres again.
        self.behind = False

    def deliver(self, delivery: Delivery) -> None:
        if delivery is not None:
            if self.behind:
                return
            if len(self.pending) >= MAX_QUEUED_READS:
                self.behind = True
                self.pending.clear()
                self.wake.set()
                return
        self.pending.append(delivery)
        self.wake.set()

    async def take(self) -> list[Delivery]:
        while not self.pending and not self.behind:
            self.wake.clear()
            await self.wake.wait()
        taken, self.pending = self.pending, []
        return taken


class RunFeed:
    """Reads one run's new events once per change and broadcasts them to its subscribers."""

    def __init__(self, broadcaster: "Broadcaster", run_id: UUID, after: int) -> None:
        self.broadcaster = broadcaster
        self.run_id = run_id
        #: The last event id broadcast: every subscriber has had (or reads itself) all up to it.
        self.last = after
        #: The run's last events read, every one of the run's events in (floor, last].
        self.recent: deque[StoredEvent] = deque()
        self.floor = after
        #: The run's status at the last read (None before the first).
        self.status: str | None = None
        self.subscribers: set[Subscriber] = set()
        self.task: asyncio.Task | None = None
        self.primed = False

    def since(self, after: int) -> list[StoredEvent] | None:
        """The run's events after ``after`` from memory, or None if some are not there."""
        if after < self.floor:
            return None
        return [event for event in self.recent if event.id > after]

    async def follow(self) -> None:
        b = self.broadcaster
        try:
            with b.notifier.subscribe(self.run_id) as poked:
                quiet = False
                while self.subscribers and not b.notifier.closed:
                    poked.clear()  # before reading, so a poke during the read is not lost
                    try:
                        more = await self.read_once(quiet)
                    except asyncio.CancelledError:
                        raise
                    except Exception:  # Postgres away: the subscribers wait, the next poke or heartbeat retries
                        log.warning("reading run %s's events failed", self.run_id, exc_info=True)
                        more = False
                    if more:
                        continue
                    try:
                        # The heartbeat re-read also catches a poke another replica lost.
                        await asyncio.wait_for(poked.wait(), b.heartbeat_s)
                        quiet = False
                    except TimeoutError:
                        quiet = True
        finally:
            # Whatever ended the feed (the app shutting down, a bug): its streams end too,
            # and clients resume with Last-Event-ID.
            for subscriber in self.subscribers:
                subscriber.deliver(None)

    async def read_once(self, quiet: bool = False) -> bool:
        """One read after ``last``, broadcast; True when a full slice says there is more.
        ``quiet``: no poke came for a heartbeat interval (streams send a keep-alive)."""
        b = self.broadcaster
        async with b.sessionmaker() as session:
            status, events = await read_events(session, self.run_id, self.last)
        b.reads += 1
        self.status = status
        if events:
            self.last = events[-1].id
            for event in events:
                if len(self.recent) >= RECENT:
                    self.floor = self.recent.popleft().id
                self.recent.append(event)
            if self.primed and b.on_read is not None:
                now = datetime.now(timezone.utc)
                b.on_read([(now - datetime.fromisoformat(e.payload["time"])).total_seconds()
                           for e in events if isinstance(e.payload.get("time"), str)])
        self.primed = True  # the first read may be history: its lag says nothing
        if events or status is None or status in TERMINAL_STATUSES:
            for subscriber in self.subscribers:
                subscriber.deliver((status, events))
            b.delivered += len(events) * len(self.subscribers)
        if quiet and not events:
            for subscriber in self.subscribers:
                subscriber.deliver(BEAT)
        return len(events) == BATCH


class Broadcaster:
    """The gateway process's feeds, by run, and its open streams, by user."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        notifier: RunNotifier,
        heartbeat_s: float,
        max_streams_per_user: int,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.notifier = notifier
        self.heartbeat_s = heartbeat_s
        self.max_streams_per_user = max_streams_per_user
        self.feeds: dict[UUID, RunFeed] = {}
        self.streams_by_user: Tally[UUID] = Tally()
        #: Counters for the metrics: feed reads of Postgres, frames handed to streams,
        #: subscribers that fell behind and caught up on their own.
        self.reads = 0
        self.delivered = 0
        self.caught_up = 0
        self.refused = 0
        #: Called with, for each event a feed reads live, how long after its own time.
        self.on_read: Callable[[list[float]], None] | None = None
        self._checks: dict[object, tuple[float, asyncio.Future]] = {}

    @property
    def streams(self) -> int:
        return sum(self.streams_by_user.values())

    def reserve(self, user_id: UUID) -> None:
        """Count a stream the user is about to open; :class:`TooManyStreams` past the cap.
        The response that serves the stream releases it (:class:`CountedStream`)."""
        if self.streams_by_user[user_id] >= self.max_streams_per_user:
            self.refused += 1
            raise TooManyStreams(self.max_streams_per_user)
        self.streams_by_user[user_id] += 1

    def release(self, user_id: UUID) -> None:
        self.streams_by_user[user_id] -= 1
        if self.streams_by_user[user_id] <= 0:
            del self.streams_by_user[user_id]

    def _join(self, run_id: UUID, after: int, start: int) -> tuple[RunFeed, Subscriber, int]:
        """Subscribe to the run's feed (started at ``start`` if there is none); with the id
        up to which the subscriber must read Postgres on its own (what the feed keeps in
        memory is handed over at once). No await: nothing is broadcast meanwhile."""
        feed = self.feeds.get(run_id)
        subscriber = Subscriber()
        if feed is None or feed.task is None or feed.task.done():
            feed = self.feeds[run_id] = RunFeed(self, run_id, start)
            feed.subscribers.add(subscriber)
            feed.task = asyncio.create_task(feed.follow(), name=f"sse-feed-{run_id}")
        else:
            feed.subscribers.add(subscriber)
        known = feed.since(after)
        if known is None:
            return feed, subscriber, feed.last
        if known:
            status = feed.status if feed.status is not None else ""
            subscriber.deliver((status, known))
        return feed, subscriber, after

    def _leave(self, feed: RunFeed, subscriber: Subscriber) -> None:
        feed.subscribers.discard(subscriber)
        if not feed.subscribers:
            if self.feeds.get(feed.run_id) is feed:
                del self.feeds[feed.run_id]
            if feed.task is not None:
                feed.task.cancel()

    async def _start(self, run_id: UUID, after: int) -> int:
        """Where a new feed starts: ``after``, or the run's last stored id if that is
        lower (a client naming an id from the future must not make the feed skip events)."""
        if run_id in self.feeds:
            return after
        async with self.sessionmaker() as session:
            newest = await session.scalar(select(func.max(RunEventRow.id)).where(RunEventRow.run_id == run_id))
        return min(after, newest or 0)

    async def still_allowed(self, key: object, check: Callable[[], Awaitable[bool]]) -> bool:
        """``check()`` (is the caller's session or token still valid?), asked at most once
        per heartbeat interval per ``key`` however many streams it has open. A check that
        fails (Postgres away, the pool exhausted) is asked again at the next heartbeat."""
        now = time.monotonic()
        entry = self._checks.get(key)
        if entry is None or now - entry[0] >= self.heartbeat_s:
            if len(self._checks) > 10_000:
                self._checks = {k: v for k, v in self._checks.items() if now - v[0] < self.heartbeat_s}
            entry = self._checks[key] = (now, asyncio.ensure_future(check()))
        try:
            return await asyncio.shield(entry[1])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self._checks.get(key) is entry:
                del self._checks[key]
            log.warning("could not re-check an event stream's credential (%s); asking again later",
                        type(exc).__name__)
            return True

    async def stream(
        self,
        run_id: UUID,
        after: int,
        still_allowed: Callable[[], Awaitable[bool]] | None = None,
    ) -> AsyncIterator[bytes]:
        """The run's SSE frames after ``after``: what is stored, then live, ending after the
        run-level terminal status event, or once ``still_allowed`` says no (checked every
        heartbeat interval)."""
        if self.notifier.closed:
            return
        last = after
        checked = time.monotonic()
        feed, subscriber, upto = self._join(run_id, after, await self._start(run_id, after))
        try:
            while True:
                # Catch up from Postgres on our own, up to where the feed was when we
                # (re)joined; the feed's reads after that wait in our inbox.
                while last < upto:
                    async with self.sessionmaker() as session:
                        status, events = await read_events(session, run_id, last, upto)
                    if status is None:
                        return  # the run is gone
                    chunk, last, ended = _frames(events, last)
                    if chunk:
                        yield chunk
                    if ended:
                        return
                    if len(events) < BATCH:
                        last = upto  # every event up to the feed's position is sent
                # Live: whatever the feed delivered since we last looked, as one chunk.
                while True:
                    taken = await subscriber.take()
                    if subscriber.behind:
                        break
                    parts, end, beat = [], False, False
                    for delivery in taken:
                        if delivery is None:
                            end = True
                            break
                        if delivery is BEAT:
                            beat = True
                            continue
                        status, events = delivery
                        chunk, last, ended = _frames(events, last)
                        if chunk:
                            parts.append(chunk)
                        # A read that saw the run ended also saw its terminal event (committed
                        # with the status): sent now, or before (the client is past it), unless
                        # the read was a full slice: then the feed reads the rest next.
                        if ended or status is None or (status in TERMINAL_STATUSES and len(events) < BATCH):
                            end = True
                            break
                    if parts:
                        yield b"".join(parts)
                    elif beat:
                        yield HEARTBEAT  # keeps proxies from closing an idle stream
                    if end or self.notifier.closed:
                        return
                    if still_allowed is not None and time.monotonic() - checked >= self.heartbeat_s:
                        if not await still_allowed():
                            return  # signed out, revoked or expired: the client must sign in again
                        checked = time.monotonic()
                # Fell too far behind: rejoin where the feed is and catch up.
                self.caught_up += 1
                self._leave(feed, subscriber)
                feed, subscriber, upto = self._join(run_id, last, last)
        finally:
            self._leave(feed, subscriber)


def _frames(events: list[StoredEvent], last: int) -> tuple[bytes, int, bool]:
    """The frames of the events after ``last`` (up to the run's end) as one chunk, the
    new last id, and whether the run ended."""
    parts = []
    for event in events:
        if event.id <= last:
            continue
        parts.append(event.frame)
        last = event.id
        if event.ends_run:
            return b"".join(parts), last, True
    return b"".join(parts), last, False


class CountedStream(StreamingResponse):
    """A stream response that gives back its user's reservation (:meth:`Broadcaster.reserve`)
    when it ends, however it ends (also when the client left before the first byte)."""

    def __init__(self, content: AsyncIterator[bytes], release: Callable[[], None], **kwargs) -> None:
        super().__init__(content, **kwargs)
        self._release = release

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()

"""The event persister: the gateway's durable JetStream consumer of every run event. It
fetches events in batches, refuses an event whose stage could not have sent it
(:mod:`inflab.gateway.event_origin`; dead-lettered, counted, logged), stores the others
in one transaction per batch (:mod:`inflab.gateway.persistence`), queues a run's next
stages when its training result arrives (:mod:`inflab.gateway.next_stages`), then wakes
the run's SSE streams on this replica and, through a core NATS poke, on every other.

One replica persists at a time: it holds a lease (:data:`inflab.core.leases.PERSISTER_KEY`)
and the others stand by, taking over within 7/6 of the lease's time-to-live when it dies. Were
two to fetch at once, a later batch of one run could commit before an earlier one (a
stage's end stored, and the run ended, before its last progress events), and SSE streams,
which end at the run's end, would miss what was stored after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from uuid import UUID, uuid4

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from pydantic import RootModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inflab.core.bus import Bus, fetched
from inflab.core.leases import PERSISTER_KEY, LeaseHeld, LeaseLost, RunLease
from inflab.core.messages import ResultEvent, RunEvent
from inflab.core.objectstore import ObjectStore
from inflab.gateway import validations
from inflab.gateway.consumers import pause
from inflab.gateway.dbwait import until_database_answers
from inflab.gateway.event_origin import origin_refusal
from inflab.gateway.next_stages import is_training_result, queue_next_stages
from inflab.gateway.notifier import RunNotifier
from inflab.gateway.persistence import persist_events

log = logging.getLogger(__name__)


class RunEventMessage(RootModel[RunEvent]):
    """Any run event. ``Bus.consume`` parses with a model class; this wraps the same
    discriminated union ``messages.parse_event`` uses, so a malformed event is
    dead-lettered by the bus with the validation error as its reason."""


class EventPersister:
    """Consumes ``subjects.all_events`` with the gateway's durable and persists the events
    in batches: up to ``batch`` messages per fetch, stored in one transaction, by the one
    replica that holds the persister's lease (see the module docstring); after each commit
    every run the batch changed is poked on every replica (a core NATS message), so their
    SSE streams follow without waiting for a heartbeat."""

    def __init__(
        self,
        bus: Bus,
        sessionmaker: async_sessionmaker[AsyncSession],
        notifier: RunNotifier,
        max_backoff_s: float = 5.0,
        on_stored: Callable[[RunEvent], None] | None = None,
        on_refused: Callable[[str], None] | None = None,
        batch: int | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.bus = bus
        self.sessionmaker = sessionmaker
        self.notifier = notifier
        self.max_backoff_s = max_backoff_s
        #: Called with each newly stored event (the event-lag metric).
        self.on_stored = on_stored
        #: Called with the category of each refused event (the refused-events metric).
        self.on_refused = on_refused
        #: Called with the number of events of each stored batch (the batch-size metric).
        self.on_batch = on_batch
        self.batch = batch or bus.settings.persister_batch
        self.durable = bus.subjects.durable("gateway_events")
        #: Sent with this replica's pokes, so it does not wake its own streams twice.
        self.origin = uuid4().hex.encode()
        #: Set while this replica holds the persister's lease (it is the one storing events).
        self.holding = asyncio.Event()
        self._objects: ObjectStore | None = None

    def object_store(self) -> ObjectStore:
        if self._objects is None:
            self._objects = ObjectStore(self.bus.settings.objects_url)
        return self._objects

    def poke_subject(self, run_id: object) -> str:
        # Gateway-internal and outside every stream: a lost poke costs one heartbeat of latency.
        return f"{self.bus.subjects.root}.gateway.persisted.{run_id}"

    # ------------------------------------------------------------------ one batch
    async def handle_batch(self, msgs: list[Msg]) -> None:
        """Store what ``msgs`` carry and settle each message: ack when stored (or a
        duplicate), term with a dead letter when refused, nak when its storing failed."""
        events: list[tuple[RunEvent, Msg]] = []
        for msg in msgs:
            event = await self._accepted(msg)
            if event is not None:
                events.append((event, msg))
        if not events:
            return
        heartbeat = asyncio.create_task(self._keep_alive([msg for _, msg in events]))
        try:
            stored, failed = await self._store(events)
            for event, msg in events:
                if id(msg) in failed:
                    continue
                if isinstance(event, ResultEvent) and event.validation is not None:
                    try:
                        # Also for a redelivered result: the analysis is written again, the same.
                        if await validations.finish(self.sessionmaker, self.object_store(), event) and not any(
                            e is event for e in stored
                        ):
                            stored.append(event)
                    except Exception as exc:
                        log.exception("could not finish run %s's validation", event.run_id)
                        failed[id(msg)] = exc
                    continue
                if not is_training_result(event):
                    continue
                try:
                    # Also for a redelivered (already stored) result: see next_stages.
                    await queue_next_stages(self.bus, self.sessionmaker, event)
                except Exception as exc:
                    log.exception("could not queue the stages after run %s's training", event.run_id)
                    failed[id(msg)] = exc
            for event in stored:
                if self.on_stored is not None:
                    self.on_stored(event)
            if self.on_batch is not None:
                self.on_batch(len(stored))
            for run_id in dict.fromkeys(event.run_id for event in stored):
                self.notifier.notify(run_id)
                try:
                    await self.bus.nc.publish(self.poke_subject(run_id), self.origin)
                except Exception:  # best effort; local streams were poked above
                    log.debug("could not poke other replicas", exc_info=True)
        except asyncio.CancelledError:
            # Shutting down mid-batch: another replica (or our restart) stores them.
            for _, msg in events:
                with contextlib.suppress(Exception):
                    await msg.nak()
            raise
        finally:
            heartbeat.cancel()
        for _, msg in events:
            if id(msg) in failed:
                await self._failed(msg, failed[id(msg)])
            else:
                try:
                    await msg.ack()
                except Exception:  # NATS away: redelivered after ack_wait, and stored once
                    log.warning("could not acknowledge an event on %s", msg.subject, exc_info=True)

    async def _accepted(self, msg: Msg) -> RunEvent | None:
        """The message's event, or None once a malformed or refused one is dead-lettered."""
        try:
            event = RunEventMessage.model_validate_json(msg.data).root
        except ValidationError as exc:
            await self._reject(msg, f"malformed RunEventMessage: {_short(exc)}")
            return None
        refusal = origin_refusal(self.bus.subjects, msg.subject, event)
        if refusal is not None:
            # Nothing of it is stored; it is dead-lettered with the reason.
            log.warning("refused %s event for run %s: %s", event.kind, event.run_id, refusal.reason)
            if self.on_refused is not None:
                self.on_refused(refusal.category)
            await self._reject(msg, f"refused event: {refusal.reason}")
            return None
        return event

    async def _store(self, events: list[tuple[RunEvent, Msg]]) -> tuple[list[RunEvent], dict[int, Exception]]:
        """The events newly stored, and the error of each message whose event could not
        be (keyed by ``id(msg)``: messages are not hashable). The batch goes in one
        transaction; if it fails for a reason other than Postgres being away, each event
        is stored alone, so only the faulty one is retried."""

        async def store(batch: list[RunEvent]) -> list[RunEvent]:
            async with self.sessionmaker() as session:
                return await persist_events(session, batch)

        what = f"storing {len(events)} events"
        try:
            return await until_database_answers(lambda: store([e for e, _ in events]), what, self.max_backoff_s), {}
        except Exception as exc:
            if len(events) == 1:
                log.exception("storing a %s event failed", events[0][0].kind)
                return [], {id(events[0][1]): exc}
            log.warning("storing a batch of %d events failed; storing them one by one", len(events), exc_info=True)
        stored: list[RunEvent] = []
        failed: dict[int, Exception] = {}
        for event, msg in events:
            try:
                stored += await until_database_answers(lambda: store([event]), what, self.max_backoff_s)
            except Exception as exc:
                log.exception("storing a %s event for run %s failed", event.kind, event.run_id)
                failed[id(msg)] = exc
        return stored, failed

    async def _reject(self, msg: Msg, reason: str) -> None:
        await self.bus.dead_letter(msg, reason)
        with contextlib.suppress(Exception):
            await msg.term()

    async def _failed(self, msg: Msg, exc: Exception) -> None:
        """As the bus settles a handler's error: nak, and dead-letter at the last delivery."""
        deliveries = msg.metadata.num_delivered
        with contextlib.suppress(Exception):  # NATS away: redelivered after ack_wait
            if deliveries >= self.bus.settings.max_deliver:
                await self.bus.dead_letter(msg, f"failed {deliveries} times: {exc!r}")
                await msg.term()
            else:
                await msg.nak(delay=self.bus.settings.nak_delay_s)

    async def _keep_alive(self, msgs: list[Msg]) -> None:
        """Keep the batch's messages ours while it is stored (Postgres may be away)."""
        interval = max(self.bus.settings.ack_wait_s / 3, 0.5)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            while True:
                await asyncio.sleep(interval)
                for msg in msgs:
                    await msg.in_progress()

    async def backlog(self) -> int:
        """Events waiting for the persister (every replica's): the durable's messages not
        yet delivered plus those delivered and not yet acknowledged."""
        info = await self.bus.js.consumer_info(self.bus.subjects.events_stream, self.durable)
        return (info.num_pending or 0) + (info.num_ack_pending or 0)

    # ------------------------------------------------------------------ consuming
    async def listen_for_pokes(self) -> None:
        """Wake this replica's streams when any replica stores an event."""

        async def on_poke(msg: Msg) -> None:
            if msg.data == self.origin:
                return  # ours: this replica's streams were poked when it stored
            try:
                self.notifier.notify(UUID(msg.subject.rsplit(".", 1)[-1]))
            except ValueError:
                pass

        await self.bus.nc.subscribe(self.poke_subject("*"), cb=on_poke)

    async def consume(self, stop: asyncio.Event, fetch_timeout: float = 1.0) -> None:
        """Fetch and store batches until ``stop``."""
        subjects = self.bus.subjects
        sub = await self.bus.pull_subscription(subjects.all_events, self.durable, subjects.events_stream, stop)
        if sub is None:
            return
        async with contextlib.aclosing(fetched(sub, stop, batch=self.batch, fetch_timeout=fetch_timeout)) as batches:
            async for msgs in batches:
                await self.handle_batch(msgs)

    async def run(self, stop: asyncio.Event, retry_s: float = 1.0, standby_s: float | None = None) -> None:
        """Consume until ``stop`` while holding the persister's lease, standing by while
        another replica holds it; if the consumer itself fails (NATS away at subscribe
        time), log and start it again rather than leave the gateway deaf.

        A standby asks for the lease every ``standby_s`` (default: a sixth of the ack wait,
        the leases' time-to-live), one key-value request each time: a dead holder's entry
        expires within the TTL, so the standby takes over within 7/6 of it, and N standbys
        cost the server N requests per ``standby_s`` rather than a busy poll."""
        standby_s = self.bus.settings.ack_wait_s / 6 if standby_s is None else standby_s
        standing_by = False
        while not stop.is_set():
            try:
                lease = await RunLease.acquire(self.bus, PERSISTER_KEY, what="run events", doing="persisted",
                                               wait=False)
                if standing_by:
                    log.info("this replica persists the run events now")
                    standing_by = False
                async with lease.kept():
                    self.holding.set()
                    try:
                        await self.consume(stop)
                    finally:
                        self.holding.clear()
                continue
            except asyncio.CancelledError:
                raise
            except LeaseHeld as exc:
                if not standing_by:
                    log.info("standing by: %s", exc)
                    standing_by = True
                await pause(stop, standby_s)
                continue
            except LeaseLost as exc:
                log.warning("event persister stopped: %s", exc)
            except Exception:
                log.exception("event persister stopped; restarting in %.1fs", retry_s)
            await pause(stop, retry_s)


def _short(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "(message)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)

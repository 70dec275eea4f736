"""The event persister: the gateway's durable JetStream consumer of every run event. It
refuses an event whose stage could not have sent it (:mod:`inflab.gateway.event_origin`;
dead-lettered, counted, logged), stores each other one
(:mod:`inflab.gateway.persistence`), queues a run's next stages when its training result
arrives (:mod:`inflab.gateway.next_stages`), then wakes the run's SSE streams on this
replica and, through a core NATS poke, on every other.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from uuid import UUID

from nats.aio.msg import Msg
from pydantic import RootModel
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inflab.common.bus import Bus, Rejected
from inflab.common.messages import ResultEvent, RunEvent
from inflab.common.objectstore import ObjectStore
from inflab.gateway import validations
from inflab.gateway.dbwait import until_database_answers
from inflab.gateway.event_origin import origin_refusal
from inflab.gateway.next_stages import is_training_result, queue_next_stages
from inflab.gateway.notifier import RunNotifier
from inflab.gateway.persistence import persist_event

log = logging.getLogger(__name__)


class RunEventMessage(RootModel[RunEvent]):
    """Any run event. ``Bus.consume`` parses with a model class; this wraps the same
    discriminated union ``messages.parse_event`` uses, so a malformed event is
    dead-lettered by the bus with the validation error as its reason."""


class EventPersister:
    """Consumes ``subjects.all_events`` with the gateway's durable and persists each event.
    Replicas share the durable, so each event is stored by one of them; after each commit
    the run is poked on every replica (a core NATS message), so their SSE streams follow
    without waiting for a heartbeat."""

    def __init__(
        self,
        bus: Bus,
        sessionmaker: async_sessionmaker[AsyncSession],
        notifier: RunNotifier,
        max_backoff_s: float = 5.0,
        on_stored: Callable[[RunEvent], None] | None = None,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self.bus = bus
        self.sessionmaker = sessionmaker
        self.notifier = notifier
        self.max_backoff_s = max_backoff_s
        #: Called with each newly stored event (the event-lag metric).
        self.on_stored = on_stored
        #: Called with the category of each refused event (the refused-events metric).
        self.on_refused = on_refused
        self.durable = bus.subjects.durable("gateway_events")
        self._store: ObjectStore | None = None

    def object_store(self) -> ObjectStore:
        if self._store is None:
            self._store = ObjectStore(self.bus.settings.objects_url)
        return self._store

    def poke_subject(self, run_id: object) -> str:
        # Gateway-internal and outside every stream: a lost poke costs one heartbeat of latency.
        return f"{self.bus.subjects.root}.gateway.persisted.{run_id}"

    async def handle(self, message: RunEventMessage, msg: Msg) -> None:
        event = message.root
        refusal = origin_refusal(self.bus.subjects, msg.subject, event)
        if refusal is not None:
            # Nothing of it is stored; the bus dead-letters it with the reason.
            log.warning("refused %s event for run %s: %s", event.kind, event.run_id, refusal.reason)
            if self.on_refused is not None:
                self.on_refused(refusal.category)
            raise Rejected(f"refused event: {refusal.reason}")

        async def store() -> bool:
            async with self.sessionmaker() as session:
                return await persist_event(session, event)

        # Another error is this event's problem: the bus naks it, and dead-letters it in the end.
        changed = await until_database_answers(store, f"storing a {event.kind} event", self.max_backoff_s)
        if is_training_result(event):
            # Also for a redelivered (already stored) result: see next_stages.
            await queue_next_stages(self.bus, self.sessionmaker, event)
        if isinstance(event, ResultEvent) and event.validation is not None:
            # Also for a redelivered result: the analysis is written again, the same.
            changed = await validations.finish(self.sessionmaker, self.object_store(), event) or changed
        if changed:
            if self.on_stored is not None:
                self.on_stored(event)
            self.notifier.notify(event.run_id)
            try:
                await self.bus.nc.publish(self.poke_subject(event.run_id), b"")
            except Exception:  # best effort; local streams were poked above
                log.debug("could not poke other replicas", exc_info=True)

    async def listen_for_pokes(self) -> None:
        """Wake this replica's streams when any replica stores an event."""

        async def on_poke(msg: Msg) -> None:
            try:
                self.notifier.notify(UUID(msg.subject.rsplit(".", 1)[-1]))
            except ValueError:
                pass

        await self.bus.nc.subscribe(self.poke_subject("*"), cb=on_poke)

    async def run(self, stop: asyncio.Event, retry_s: float = 1.0) -> None:
        """Consume until ``stop``; if the consumer itself fails (NATS away at subscribe
        time), log and start it again rather than leave the gateway deaf."""
        while not stop.is_set():
            try:
                await self.bus.consume(
                    self.bus.subjects.all_events,
                    RunEventMessage,
                    self.handle,
                    stop,
                    durable=self.durable,
                    stream=self.bus.subjects.events_stream,
                )
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event persister stopped; restarting in %.1fs", retry_s)
                try:
                    await asyncio.wait_for(stop.wait(), retry_s)
                except TimeoutError:
                    pass

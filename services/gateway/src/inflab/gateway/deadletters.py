"""The gateway's consumer of the dead-letter stream: a job request that a worker rejected
(a refused model, a malformed request, a job that failed on every delivery) fails its
run's stage with the reason, so the run ends visibly instead of waiting for a stage that
will never report.

The failure is stored as a status event of that stage (its id derived from the letter's,
so a redelivered letter is stored once) straight into Postgres, exactly as the persister
stores a worker's; it is not published, since stage events are the workers' to send.
Letters about anything else (submissions, control messages, events) change no run.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from nats.aio.msg import Msg
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inflab.core.bus import Bus
from inflab.core.db.models import Run
from inflab.core.messages import DeadLetter, StatusEvent
from inflab.core.subjects import REQUEST_STAGES
from inflab.gateway.consumers import consume_until_stopped
from inflab.gateway.dbwait import until_database_answers
from inflab.gateway.dispatch import Dispatcher
from inflab.gateway.notifier import RunNotifier
from inflab.gateway.persistence import persist_event
from inflab.core.vocabulary import TERMINAL_STATUSES
from inflab.gateway.run_state import stage_key

log = logging.getLogger(__name__)

#: Namespace of the status events made from dead letters (uuid5 of the letter id).
LETTER_EVENTS = uuid.UUID("6f1b7a52-3c1e-4e0a-9d0b-0d5e2d7c1a10")


class DeadLetterConsumer:
    def __init__(
        self,
        bus: Bus,
        sessionmaker: async_sessionmaker[AsyncSession],
        notifier: RunNotifier,
        dispatcher: Dispatcher,
    ) -> None:
        self.bus = bus
        self.sessionmaker = sessionmaker
        self.notifier = notifier
        self.dispatcher = dispatcher
        self.durable = bus.subjects.durable("gateway_deadletters")
        self._stages = {bus.subjects.request(stage): stage for stage in REQUEST_STAGES}

    async def handle(self, letter: DeadLetter, msg: Msg) -> None:
        stage = self._stages.get(letter.subject)
        if stage is None or letter.run_id is None:
            return
        reason = f"the {letter.service} rejected the {stage} request: {letter.reason}"[:2000]

        async def fail() -> bool:
            async with self.sessionmaker() as session:
                run = await session.get(Run, letter.run_id)
                if run is not None and stage == "validation":
                    # The run has ended (a validation follows it): the validation fails.
                    stage_name, method = "validation", None
                else:
                    if run is None or run.status in TERMINAL_STATUSES:
                        return False
                    method = letter.method if stage == "influence" else None
                    if stage_key(stage, method) not in run.stages:
                        stage_name, method = "run", None  # no such stage to fail: fail the run itself
                    else:
                        stage_name = stage
                event = StatusEvent(
                    event_id=uuid.uuid5(LETTER_EVENTS, str(letter.letter_id)),
                    run_id=letter.run_id, stage=stage_name, method=method, status="failed", error=reason,
                )
                await session.rollback()  # persist_event opens its own transaction
                return await persist_event(session, event)

        if await until_database_answers(fail, "a dead-lettered job request"):
            log.warning("run %s failed: %s", letter.run_id, reason)
            self.notifier.notify(letter.run_id)
            self.dispatcher.poke()  # a place in the queue may have freed

    async def run(self, stop: asyncio.Event, retry_s: float = 1.0) -> None:
        """Consume until ``stop``, restarting the consumer if it fails."""
        await consume_until_stopped(self.bus, self.bus.subjects.all_dead_letters, DeadLetter, self.handle, stop,
                                    durable=self.durable, stream=self.bus.subjects.dead_letter_stream,
                                    retry_s=retry_s, log=log, what="dead-letter consumer")

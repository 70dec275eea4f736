"""The trainer service's side of runtime control: every message on a run's control subject,
from the first one on, validated and handed on.

An *ordered consumer* (ephemeral, server-side flow control, redelivers nothing, restarts
itself on a gap) with deliver policy ALL on the control stream, filtered on the run's
subject: a cancel sent while the run was still queued, or before the trainer restarted
and resumed it, is seen like one sent a moment ago. Instructions are absolute (a new
learning rate, cancel), so seeing one again after a resume is harmless; the training loop
also skips parameter changes whose request id its checkpoint says it already applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from uuid import UUID

from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from inflab.core.bus import Bus, _short
from inflab.core.events import StageEvents
from inflab.core.messages import ControlMessage

log = logging.getLogger(__name__)

Forward = Callable[[dict], Awaitable[object]]


class ControlSubscription:
    def __init__(self, bus: Bus, run_id: UUID, events: StageEvents) -> None:
        self.bus = bus
        self.run_id = run_id
        self.events = events
        self.subject = bus.subjects.control(run_id)
        #: Set once a valid cancel has been seen.
        self.cancelled = False
        self._buffer: list[dict] = []
        self._forward: Forward | None = None
        self._last_seq = 0
        self._seen = asyncio.Condition()
        self._sub = None

    async def start(self) -> "ControlSubscription":
        self._sub = await self.bus.js.subscribe(
            self.subject,
            stream=self.bus.subjects.control_stream,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
            cb=self._on_message,
        )
        return self

    async def caught_up(self, timeout: float = 10.0) -> None:
        """Wait until every message published on the subject before this call was seen, so
        the service can decide about a run cancelled before it started."""
        try:
            last = await self.bus.js.get_last_msg(self.bus.subjects.control_stream, self.subject)
        except NotFoundError:
            return
        try:
            async with self._seen:
                await asyncio.wait_for(self._seen.wait_for(lambda: self._last_seq >= last.seq), timeout)
        except TimeoutError:
            # Not fatal: a late cancel still reaches the running task through the mailbox.
            log.warning("control messages of run %s not caught up after %.0f s; starting anyway", self.run_id, timeout)

    async def attach(self, forward: Forward) -> None:
        """From now on hand each valid message to ``forward`` (those seen so far first)."""
        buffered, self._buffer = self._buffer, []
        for item in buffered:
            await forward(item)
        self._forward = forward

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def _on_message(self, msg: Msg) -> None:
        try:
            await self._take(msg)
        except Exception:  # a callback error would end the subscription's task
            log.exception("control message for run %s not handled", self.run_id)
        finally:
            seq = msg.metadata.sequence.stream if msg.metadata else 0
            async with self._seen:
                self._last_seq = max(self._last_seq, seq)
                self._seen.notify_all()

    async def _take(self, msg: Msg) -> None:
        try:
            message = ControlMessage.model_validate_json(msg.data)
        except ValidationError as exc:
            await self._reject(msg, f"malformed ControlMessage: {_short(exc)}")
            return
        if message.run_id != self.run_id:
            await self._reject(msg, f"control message for run {message.run_id} on run {self.run_id}'s subject")
            return
        if message.action == "cancel":
            self.cancelled = True
        item = message.model_dump(mode="json")
        if self._forward is None:
            self._buffer.append(item)
        else:
            await self._forward(item)

    async def _reject(self, msg: Msg, reason: str) -> None:
        """Dead-letter it and tell the run's event stream; the run goes on."""
        await self.bus.dead_letter(msg, reason)
        with contextlib.suppress(Exception):
            await self.events.log(f"ignored a control message: {reason}"[:2000], level="warning")

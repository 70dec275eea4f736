"""Publishing one run stage's events: what an ML library emits, a typed event message
(``ProgressEvent``, ...) or a plain dict (``{"kind": "progress", ...}``), goes out as a
typed event message on the run's event subject.

An event carrying a list that can grow with the run (a result's ``answers``, a
prediction's ``samples``) is split into several events when its JSON would not fit in one
NATS message (:func:`split_event`); the gateway stores such rows keyed by evaluation
question or prompt, so the parts add up to the whole.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any
from uuid import UUID, uuid4

from pydantic import ValidationError

from inflab.core.bus import Bus, BusUnavailable
from inflab.core.compute import describe_error, run_streaming
from inflab.core.messages import EVENT_MODEL_BY_KIND, EventBase
from inflab.core.subjects import STAGE_EVENT_KINDS
from inflab.core.vocabulary import ACTIVE_STATUSES, RunStatus

log = logging.getLogger(__name__)

#: Statuses a job may emit itself through ``forward``: a stage at work.
JOB_STATUSES = ACTIVE_STATUSES

#: List fields an event may be split along, each item landing in exactly one part.
SPLITTABLE = ("answers", "samples")


def _json_size(value: Any) -> int:
    return len(value.model_dump_json().encode())


def split_event(event: EventBase, max_bytes: int) -> list[EventBase]:
    """``event`` as parts of at most ``max_bytes`` of JSON each, its ``answers`` or
    ``samples`` spread over them in order (every other field repeated, each part its own
    event id); an event that fits, or has no such list, is returned as it is. An item too
    large for a part on its own gets a part of its own (its publish then fails loudly)."""
    if _json_size(event) <= max_bytes:
        return [event]
    field = next((f for f in SPLITTABLE if isinstance(getattr(event, f, None), list) and getattr(event, f)), None)
    if field is None:
        return [event]
    envelope = _json_size(event.model_copy(update={field: []}))
    parts: list[list] = [[]]
    size = envelope
    for item in getattr(event, field):
        item_size = _json_size(item) + 1  # and its comma
        if parts[-1] and size + item_size > max_bytes:
            parts.append([])
            size = envelope
        parts[-1].append(item)
        size += item_size
    return [event.model_copy(update={field: part, "event_id": uuid4()}) for part in parts]


class StageEvents:
    """Events of one stage (``train``, ``inference``, ``influence`` + method) of one run."""

    def __init__(self, bus: Bus, run_id: UUID, stage: str, method: str | None = None):
        self.bus = bus
        self.run_id = run_id
        self.stage = stage
        self.method = method

    def build(self, kind: str, **fields: Any) -> EventBase:
        model = EVENT_MODEL_BY_KIND[kind]
        return model(run_id=self.run_id, stage=self.stage, method=self.method, **fields)

    async def publish(self, kind: str, **fields: Any) -> None:
        await self.publish_event(self.build(kind, **fields))

    async def publish_event(self, event: EventBase) -> None:
        for part in split_event(event, self.bus.max_event_bytes):
            await self.bus.publish_event(part)

    async def status(self, status: RunStatus, error: str | None = None) -> None:
        await self.publish("status", status=status, error=error)

    async def log(self, message: str, level: str = "info") -> None:
        await self.publish("log", level=level, message=message)

    async def forward(self, item: dict | EventBase) -> None:
        """Publish an event or a dict emitted by an ML library; unknown kinds (and kinds
        this stage does not send: its credential may not publish them) become log lines
        rather than failures (a library adding a new kind must not break a run). A library
        may report the in-flight statuses (``running``, ``checkpointing``) only: terminal
        ones are the service's, which knows whether the job is acknowledged. An event goes
        out under this stage's run, stage and method whatever it carries (the job is this
        stage's), with its own id and time."""
        if isinstance(item, EventBase):
            kind = getattr(item, "kind", None)
            if not self._may_forward(kind, getattr(item, "status", None)):
                await self.log(f"unrecognised progress item: {kind!r}", level="debug")
                return
            await self.publish_event(item.model_copy(update={"run_id": self.run_id, "stage": self.stage,
                                                             "method": self.method}))
            return
        item = dict(item)
        kind = item.pop("kind", None)
        if not self._may_forward(kind, item.get("status")):
            await self.log(f"unrecognised progress item: {kind!r}", level="debug")
            return
        try:
            event = self.build(kind, **item)
        except ValidationError as exc:
            await self.log(f"dropped a malformed {kind} item: {exc.errors()[:1]}", level="warning")
            return
        await self.publish_event(event)

    def _may_forward(self, kind: Any, status: Any) -> bool:
        return kind in STAGE_EVENT_KINDS.get(self.stage, ()) and (kind != "status" or status in JOB_STATUSES)

    async def run_job(
        self,
        fn: Callable,
        *args: Any,
        num_cpus: float,
        num_gpus: float = 0,
        failure_text: Callable[[BaseException], str] = describe_error,
        deadline_s: float | None = None,
    ) -> tuple[bool, Any]:
        """Run a worker's job on Ray with its emitted items forwarded as this stage's events.
        Returns ``(True, result)``; a failure of the job itself is the run's answer, not a
        retry, so it becomes this stage's ``failed`` status and ``(False, None)``. A job
        still running after ``deadline_s`` (default ``INFLAB_JOB_DEADLINE_S``) is stopped
        and the stage ``cancelled`` with an error saying so. NATS failing while the events
        are published is not the job's failure: :class:`BusUnavailable` goes up to the
        consumer, which gives the message back, and a redelivery resumes the stage."""
        deadline_s = self.bus.settings.job_deadline_s if deadline_s is None else deadline_s
        timeout = asyncio.timeout(deadline_s)
        try:
            async with timeout:
                result = await run_streaming(fn, *args, num_cpus=num_cpus, num_gpus=num_gpus, on_event=self.forward)
            return True, result
        except (asyncio.CancelledError, BusUnavailable):
            raise
        except Exception as exc:
            if timeout.expired():
                error = (f"the {self.stage} stage ran past its deadline of {deadline_s:g} s "
                         "(INFLAB_JOB_DEADLINE_S) and was stopped")
                log.warning("run %s: %s", self.run_id, error)
                await self.status("cancelled", error=error)
                return False, None
            log.exception("%s failed for run %s", self.stage, self.run_id)
            await self.status("failed", error=failure_text(exc))
            return False, None

"""Publishing one run stage's events: turns the plain dicts that ML libraries emit
(``{"kind": "progress", ...}``) into typed event messages on the run's event subject."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any
from uuid import UUID

from pydantic import ValidationError

from inflab.common.bus import Bus
from inflab.common.compute import describe_error, run_streaming
from inflab.common.messages import (
    CheckpointEvent,
    EventBase,
    LogEvent,
    MetricEvent,
    ParamsEvent,
    PredictionEvent,
    ProgressEvent,
    ResultEvent,
    StatusEvent,
)
from inflab.common.subjects import STAGE_EVENT_KINDS

log = logging.getLogger(__name__)

_KINDS: dict[str, type[EventBase]] = {
    "progress": ProgressEvent,
    "metric": MetricEvent,
    "checkpoint": CheckpointEvent,
    "log": LogEvent,
    "result": ResultEvent,
    "status": StatusEvent,
    "prediction": PredictionEvent,
    "params": ParamsEvent,
}


#: Statuses a job may emit itself through ``forward``.
JOB_STATUSES = ("running", "checkpointing")


class StageEvents:
    """Events of one stage (``train``, ``inference``, ``influence`` + method) of one run."""

    def __init__(self, bus: Bus, run_id: UUID, stage: str, method: str | None = None):
        self.bus = bus
        self.run_id = run_id
        self.stage = stage
        self.method = method

    def build(self, kind: str, **fields: Any) -> EventBase:
        model = _KINDS[kind]
        return model(run_id=self.run_id, stage=self.stage, method=self.method, **fields)

    async def publish(self, kind: str, **fields: Any) -> None:
        await self.bus.publish_event(self.build(kind, **fields))

    async def status(self, status: str, error: str | None = None) -> None:
        await self.publish("status", status=status, error=error)

    async def log(self, message: str, level: str = "info") -> None:
        await self.publish("log", level=level, message=message)

    async def forward(self, item: dict) -> None:
        """Publish a dict emitted by an ML library; unknown kinds (and kinds this stage
        does not send: its credential may not publish them) become log lines rather than
        failures (a library adding a new kind must not break a run). A library may
        report the in-flight statuses (``running``, ``checkpointing``) only: terminal ones
        are the service's, which knows whether the job is acknowledged."""
        item = dict(item)
        kind = item.pop("kind", None)
        if (
            kind not in STAGE_EVENT_KINDS.get(self.stage, ())
            or (kind == "status" and item.get("status") not in JOB_STATUSES)
        ):
            await self.log(f"unrecognised progress item: {kind!r}", level="debug")
            return
        try:
            event = self.build(kind, **item)
        except ValidationError as exc:
            await self.log(f"dropped a malformed {kind} item: {exc.errors()[:1]}", level="warning")
            return
        await self.bus.publish_event(event)

    async def run_job(
        self,
        fn: Callable,
        *args: Any,
        num_cpus: float,
        failure_text: Callable[[BaseException], str] = describe_error,
    ) -> tuple[bool, Any]:
        """Run a worker's job on Ray with its emitted items forwarded as this stage's events.
        Returns ``(True, result)``; a failure of the job itself is the run's answer, not a
        retry, so it becomes this stage's ``failed`` status and ``(False, None)``."""
        try:
            return True, await run_streaming(fn, *args, num_cpus=num_cpus, on_event=self.forward)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("%s failed for run %s", self.stage, self.run_id)
            await self.status("failed", error=failure_text(exc))
            return False, None

"""A stage forwarding what an ML core emits (inflab.common.events.StageEvents.forward),
against a real NATS server: typed events publish as the stage's own, exactly as the same
item as a dict does, the trainer's metric and checkpoint events keep their step-derived ids,
and items the stage may not send are logged instead."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from inflab.common.bus import Bus
from inflab.common.events import StageEvents
from inflab.common.messages import (
    CheckpointEvent, CheckpointRef, LogEvent, MetricEvent, ProgressEvent, StatusEvent, parse_event,
)
from inflab.common.objectstore import checkpoint_prefix
from inflab.common.settings import Settings
from inflab.trainer.core_events import NO_RUN, CoreEvents
from inflab.trainer.service import TRAIN_EVENTS, TrainEvents

pytestmark = pytest.mark.integration


@pytest.fixture
async def bus(settings: Settings):
    tag = uuid.uuid4().hex[:8]
    own = settings.model_copy(
        update={"subject_prefix": f"{settings.subject_prefix}{tag}", "stream_prefix": f"{settings.stream_prefix}{tag}"}
    )
    b = await Bus.connect(own, "trainer", create_streams=True)
    yield b
    for stream in (b.subjects.jobs_stream, b.subjects.events_stream, b.subjects.dead_letter_stream,
                   b.subjects.control_stream, b.subjects.submissions_stream):
        await b.js.delete_stream(stream)
    await b.close()


async def _published(bus: Bus, run_id: uuid.UUID, send, count: int) -> list:
    """The first ``count`` events published on the run's subjects while ``send()`` runs."""
    received: asyncio.Queue = asyncio.Queue()
    sub = await bus.nc.subscribe(bus.subjects.event(run_id, "*", "*"), cb=received.put)
    try:
        await send()
        async with asyncio.timeout(15):
            return [parse_event((await received.get()).data) for _ in range(count)]
    finally:
        await sub.unsubscribe()


async def test_typed_events_publish_as_the_stage_s_own(bus: Bus) -> None:
    run_id = uuid.uuid4()
    stage = TrainEvents(bus, run_id, "train")
    core = CoreEvents("train")  # a core that was not told its run
    metric = {"step": 3, "epoch": 1.5, "loss": 0.25, "learning_rate": 1e-3, "grad_norm": 0.5}
    ref = CheckpointRef(step=4, epoch=2, key=checkpoint_prefix(run_id, 4), learning_rate=1e-3, loss=0.2)

    async def send() -> None:
        await stage.forward(core.make(ProgressEvent, fraction=0.5, step=3, total=6, epoch=1.5, eta_s=2.0))
        await stage.forward(core.make(MetricEvent, **metric))
        await stage.forward({"kind": "metric", **metric})  # the same metric as a dict
        # The job knows its run: its checkpoint events name it (the key must lie under it).
        await stage.forward(CoreEvents("train", run_id).make(CheckpointEvent, checkpoint=ref))
        await stage.forward(core.make(StatusEvent, status="checkpointing"))
        await stage.forward(core.make(StatusEvent, status="completed"))  # the service's to say
        await stage.forward(core.make(LogEvent, level="warning", message="done"))

    progress, typed, plain, checkpoint, status, refused, log = await _published(bus, run_id, send, 7)
    assert core.run_id == NO_RUN
    for event in (progress, typed, plain, checkpoint, status, refused, log):
        assert (event.run_id, event.stage, event.method) == (run_id, "train", None)
    assert (progress.kind, progress.fraction, progress.step, progress.total, progress.eta_s) == ("progress", 0.5, 3, 6, 2.0)
    # A metric's id comes from the run and its step, whichever way it was emitted.
    assert typed.model_dump(exclude={"time"}) == plain.model_dump(exclude={"time"})
    assert typed.event_id == uuid.uuid5(TRAIN_EVENTS, f"{run_id}:metric:3")
    assert checkpoint.kind == "checkpoint" and checkpoint.checkpoint == ref
    assert checkpoint.event_id == uuid.uuid5(TRAIN_EVENTS, f"{run_id}:checkpoint:4")
    assert status.kind == "status" and status.status == "checkpointing"
    assert refused.kind == "log" and refused.level == "debug" and "'status'" in refused.message
    assert (log.kind, log.level, log.message) == ("log", "warning", "done")


async def test_a_typed_event_keeps_an_id_its_emitter_chose(bus: Bus) -> None:
    run_id = uuid.uuid4()
    chosen = uuid.uuid4()
    event = CoreEvents("train").make(ProgressEvent, event_id=chosen, fraction=1.0)

    async def send() -> None:
        await StageEvents(bus, run_id, "train").forward(event)

    (published,) = await _published(bus, run_id, send, 1)
    assert (published.event_id, published.run_id, published.stage) == (chosen, run_id, "train")

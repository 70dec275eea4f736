"""A job's typed events (``ProgressEvent``, ...) go out through ``StageEvents.forward`` like
the dicts it also takes: under the stage's run, stage and method, and only the kinds the
stage may send; over real NATS."""

from __future__ import annotations

import asyncio
import json
import uuid

import nats
import pytest

from inflab.core.bus import Bus
from inflab.core.events import StageEvents
from inflab.core.messages import LogEvent, MetricEvent, ProgressEvent, StatusEvent
from inflab.core.subjects import Subjects

pytestmark = [pytest.mark.integration]


async def test_typed_events_are_forwarded_under_the_stage(settings) -> None:
    run_id, elsewhere = uuid.uuid4(), uuid.uuid4()
    bus = await Bus.connect(settings, "gateway", create_streams=True)
    nc = await nats.connect(settings.nats_url)
    seen: list[dict] = []
    got = asyncio.Event()

    async def on_event(msg) -> None:
        event = json.loads(msg.data)
        if event["run_id"] == str(run_id):
            seen.append(event)
            if event["kind"] == "log" and event["message"] == "last":
                got.set()

    try:
        sub = await nc.subscribe(Subjects.from_settings(settings).all_events, cb=on_event)
        await nc.flush()  # the server has the subscription before anything is published
        events = StageEvents(bus, run_id, "influence", method="tracin")
        # As the influence core builds it outside the service: another run id, no method.
        progress = ProgressEvent(run_id=elsewhere, stage="influence", fraction=0.5, step=1, total=2, eta_s=1.0,
                                 message="half")
        await events.forward(progress)
        # A kind the influence stage does not send, and a terminal status: log lines instead.
        await events.forward(MetricEvent(run_id=run_id, stage="train", step=1, epoch=1.0, loss=1.0,
                                         learning_rate=1e-3))
        await events.forward(StatusEvent(run_id=run_id, stage="influence", status="completed"))
        # Dicts still go through as before.
        await events.forward({"kind": "progress", "fraction": 1.0, "step": 2, "total": 2})
        await events.forward(LogEvent(run_id=run_id, stage="influence", message="last"))
        await asyncio.wait_for(got.wait(), 10)
        await sub.unsubscribe()
    finally:
        await nc.close()
        await bus.close()

    kinds = [(e["kind"], e.get("fraction", e.get("message"))) for e in seen]
    assert kinds == [("progress", 0.5), ("log", "unrecognised progress item: 'metric'"),
                     ("log", "unrecognised progress item: 'status'"), ("progress", 1.0), ("log", "last")]
    assert all(e["stage"] == "influence" and e["method"] == "tracin" for e in seen)
    first = seen[0]
    assert first["event_id"] == str(progress.event_id) and first["message"] == "half" and first["eta_s"] == 1.0

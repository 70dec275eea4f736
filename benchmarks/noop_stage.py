"""A stand-in for the trainer, inference and influence workers that does no work: it takes
each signed job request off the work queue, as the real workers do, and reports its stage
``running`` then ``completed`` (training also with a one-checkpoint result, so the gateway
queues the next stages). With it, a load benchmark measures only the gateway, NATS and
Postgres. Configured from ``INFLAB_*`` like every service (it needs
``INFLAB_JOB_VERIFY_KEY``).

    python -m benchmarks.noop_stage
"""

from __future__ import annotations

import asyncio
import signal

from inflab.core.bus import Bus
from inflab.core.messages import (
    CheckpointRef,
    InferenceRequest,
    InfluenceRequest,
    ResultEvent,
    StatusEvent,
    TrainingSummary,
    TrainRequest,
)
from inflab.core.settings import get_settings
from inflab.core.store_layout import checkpoint_prefix


async def main() -> None:
    settings = get_settings()
    bus = await Bus.connect(settings, "noop-stage")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def train(request: TrainRequest, _msg) -> None:
        stage = dict(run_id=request.run_id, stage="train")
        checkpoint = CheckpointRef(step=1, epoch=1, key=checkpoint_prefix(request.run_id, 1), learning_rate=1e-4,
                                   loss=1.0)
        await bus.publish_event(StatusEvent(**stage, status="running"))
        await bus.publish_event(ResultEvent(**stage, training=TrainingSummary(
            steps=1, epochs=1, tokens=1, duration_s=0.0, checkpoints=[checkpoint])))
        await bus.publish_event(StatusEvent(**stage, status="completed"))

    async def inference(request: InferenceRequest, _msg) -> None:
        for status in ("running", "completed"):
            await bus.publish_event(StatusEvent(run_id=request.run_id, stage="inference", status=status))

    async def influence(request: InfluenceRequest, _msg) -> None:
        for status in ("running", "completed"):
            await bus.publish_event(StatusEvent(run_id=request.run_id, stage="influence", method=request.method,
                                                status=status))

    s = bus.subjects
    try:
        await asyncio.gather(
            bus.consume(s.request("train"), TrainRequest, train, stop, durable=s.durable("trainer_train"),
                        signed=True),
            bus.consume(s.request("inference"), InferenceRequest, inference, stop,
                        durable=s.durable("inference_inference"), signed=True),
            bus.consume(s.request("influence"), InfluenceRequest, influence, stop,
                        durable=s.durable("influence_influence"), signed=True),
        )
    finally:
        await bus.close()


if __name__ == "__main__":
    asyncio.run(main())

"""Trainer service: translates train requests into training jobs on Ray and their
outcome into events and the run's next stages. No ML here (see training.py)."""

from __future__ import annotations

import asyncio
import logging

from nats.aio.msg import Msg

from inflab.common.bus import Bus
from inflab.common.compute import describe_error, run_streaming
from inflab.common.events import StageEvents
from inflab.common.messages import InferenceRequest, InfluenceRequest, TrainingSummary, TrainRequest
from inflab.common.objectstore import ObjectStore
from inflab.common.settings import Settings
from inflab.trainer.job import load_summary, train_job

log = logging.getLogger(__name__)

SERVICE = "trainer"
STAGE = "train"


class TrainerService:
    def __init__(self, bus: Bus, settings: Settings):
        self.bus = bus
        self.settings = settings
        self.store = ObjectStore(settings.objects_url)

    async def on_train_request(self, request: TrainRequest, msg: Msg | None = None) -> None:
        events = StageEvents(self.bus, request.run_id, STAGE)
        # Idempotent on redelivery: a finished training is not run again, its next
        # stages are re-published (deduplicated by message id) instead.
        summary = await asyncio.to_thread(load_summary, self.store, request.run_id)
        if summary is None:
            await events.status("running")
            try:
                raw = await run_streaming(
                    train_job,
                    request.model_dump(mode="json"),
                    self.settings.objects_url,
                    str(self.settings.models_dir),
                    num_cpus=self.settings.train_num_cpus,
                    on_event=events.forward,
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the job's own failure is the run's answer, not a retry
                log.exception("training failed for run %s", request.run_id)
                await events.status("failed", error=describe_error(exc))
                return
            summary = TrainingSummary.model_validate(raw)
        await events.publish("result", training=summary)
        await self.publish_next_stages(request, summary)
        await events.status("completed")

    async def publish_next_stages(self, request: TrainRequest, summary: TrainingSummary) -> None:
        subjects = self.bus.subjects
        final = summary.checkpoints[-1]
        inference = InferenceRequest(
            run_id=request.run_id, owner_id=request.owner_id, spec=request.spec, adapter=final
        )
        await self.bus.publish(subjects.inference_request, inference, msg_id=f"{request.run_id}:inference")
        for method in request.spec.influence_methods:
            influence = InfluenceRequest(
                run_id=request.run_id,
                owner_id=request.owner_id,
                spec=request.spec,
                method=method,
                checkpoints=summary.checkpoints,
            )
            await self.bus.publish(
                subjects.influence_request, influence, msg_id=f"{request.run_id}:influence:{method}"
            )


def make_handler(bus: Bus, settings: Settings):
    return TrainerService(bus, settings).on_train_request

"""Inference service: translates inference requests into generation jobs on Ray and
their answers into a result event. No ML here (see generation.py)."""

from __future__ import annotations

from dataclasses import asdict

from nats.aio.msg import Msg

from inflab.core.bus import Bus
from inflab.core.events import StageEvents
from inflab.core.messages import InferenceRequest
from inflab.ml.predictions import PredictionLimits
from inflab.core.settings import Settings
from inflab.core.worker import require_allowed_model
from inflab.inference.job import inference_job

SERVICE = "inference"
STAGE = "inference"


class InferenceService:
    def __init__(self, bus: Bus, settings: Settings):
        self.bus = bus
        self.settings = settings

    async def on_inference_request(self, request: InferenceRequest, msg: Msg | None = None) -> None:
        # Idempotent: a redelivered request recomputes the same greedy answers, and the
        # gateway stores answers keyed by (run, evaluation question).
        require_allowed_model(request.spec.model_id, self.settings)
        events = StageEvents(self.bus, request.run_id, STAGE)
        await events.status("running")
        ok, answers = await events.run_job(
            inference_job,
            request.model_dump(mode="json"),
            self.settings.objects_url,
            str(self.settings.models_dir),
            asdict(PredictionLimits.from_settings(self.settings)),
            num_cpus=self.settings.inference_num_cpus,
            num_gpus=self.settings.inference_num_gpus,
        )
        if not ok:
            return
        # Split into several result events when a large evaluation set would not fit in one.
        await events.publish("result", answers=answers)
        await events.status("completed")


def make_handler(bus: Bus, settings: Settings):
    return InferenceService(bus, settings).on_inference_request

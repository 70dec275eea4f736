"""The trainer's validation stage: translates validation requests into a validation job on
Ray (which fans the retrainings out as Ray tasks, see ``validation_job.py``), a
``cancel_validation`` on the run's control subject into cancelling it, and the measured
losses into the validation's result event. The gateway computes the LDS and removal test
from them. No ML here."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.aio.msg import Msg

from inflab.core.bus import Bus
from inflab.core.events import StageEvents
from inflab.core.messages import ValidationRequest
from inflab.core.settings import Settings
from inflab.core.worker import require_allowed_model
from inflab.trainer.control_subscription import ControlSubscription
from inflab.trainer.validation_job import validation_job

log = logging.getLogger(__name__)

SERVICE = "trainer"
STAGE = "validation"
#: The coordinating task only waits on the retrainings: it holds no CPU of its own.
COORDINATOR_CPUS = 0


class ValidationService:
    def __init__(self, bus: Bus, settings: Settings):
        self.bus = bus
        self.settings = settings

    async def on_validation_request(self, request: ValidationRequest, msg: Msg | None = None) -> None:
        require_allowed_model(request.spec.model_id, self.settings)
        events = StageEvents(self.bus, request.run_id, STAGE)
        cancelled = asyncio.Event()
        wanted = str(request.validation_id)

        async def on_control(item: dict) -> None:
            if item.get("action") == "cancel_validation" and item.get("validation_id") == wanted:
                cancelled.set()

        controls = await ControlSubscription(self.bus, request.run_id, events).start()
        try:
            await controls.caught_up()
            await controls.attach(on_control)
            if cancelled.is_set():  # cancelled while queued
                await events.status("cancelled", error="cancelled by its owner")
                return
            await events.status("running")
            job = asyncio.ensure_future(events.run_job(
                validation_job, request.model_dump(mode="json"), str(self.settings.models_dir),
                num_cpus=COORDINATOR_CPUS,
            ))
            stop = asyncio.ensure_future(cancelled.wait())
            await asyncio.wait({job, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not job.done():
                # Cancelling the awaiting task cancels the Ray job and its retrainings.
                job.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await job
                await events.status("cancelled", error="cancelled by its owner")
                return
            stop.cancel()
            ok, result = job.result()
        finally:
            await controls.stop()
        if not ok:
            return
        await events.publish("result", validation=result)
        await events.status("completed")


def make_handler(bus: Bus, settings: Settings):
    return ValidationService(bus, settings).on_validation_request

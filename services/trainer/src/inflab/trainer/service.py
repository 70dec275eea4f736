"""Trainer service: translates train requests into training jobs on Ray, the run's control
messages into the job's mailbox, and the job's outcome into events (the gateway queues the
run's next stages from the result event). No ML here (see training.py)."""

from __future__ import annotations

import asyncio
from dataclasses import asdict

from nats.aio.msg import Msg

from inflab.core.bus import Bus
from inflab.core.events import StageEvents
from inflab.core.leases import RunLease
from inflab.core.messages import TrainingSummary, TrainRequest
from inflab.core.objectstore import ObjectStore
from inflab.ml.predictions import PredictionLimits
from inflab.core.settings import Settings
from inflab.core.worker import require_allowed_model
from inflab.trainer.control_subscription import ControlSubscription
from inflab.trainer.job import TrainingStopped, finished_events, load_summary, train_job


SERVICE = "trainer"
STAGE = "train"


class TrainerService:
    def __init__(self, bus: Bus, settings: Settings):
        self.bus = bus
        self.settings = settings
        self.store = ObjectStore(settings.objects_url)
        self._mailbox = None

    def mailbox(self):
        """The control mailbox actor, started on first use (see mailbox.py)."""
        if self._mailbox is None:
            from inflab.trainer.mailbox import create_mailbox

            self._mailbox = create_mailbox()
        return self._mailbox

    async def on_train_request(self, request: TrainRequest, msg: Msg | None = None) -> None:
        require_allowed_model(request.spec.model_id, self.settings)
        # One training of a run at a time, whatever JetStream redelivers to which replica:
        # LeaseHeld leaves the request to the holder, LeaseLost stops this one (leases.py).
        lease = await RunLease.acquire(self.bus, request.run_id)
        async with lease.kept():
            await self._handle(request)

    async def _handle(self, request: TrainRequest) -> None:
        # The metric and checkpoint events come with ids derived from the run and the step
        # (inflab.trainer.core_events), so those sent again after a resume are stored once.
        events = StageEvents(self.bus, request.run_id, STAGE)
        # Idempotent on redelivery: a finished training is not run again, its result is
        # re-published instead. The gateway queues the next stages when it stores the
        # result (only the gateway publishes job requests).
        summary = await asyncio.to_thread(load_summary, self.store, request.run_id)
        if summary is None:
            outcome = await self.train(request, events)
            if outcome is None:
                return
            summary = outcome
        else:
            for item in await asyncio.to_thread(finished_events, self.store, request.run_id):
                await events.forward(item)
        await events.publish("result", training=summary)
        await events.status("completed")

    async def train(self, request: TrainRequest, events: StageEvents) -> TrainingSummary | None:
        """Run the training job with the run's control messages forwarded into it. Returns
        None when the run ended otherwise (failed or cancelled; its status is published)."""
        controls = await ControlSubscription(self.bus, request.run_id, events).start()
        run_key = str(request.run_id)
        mailbox = None
        try:
            await controls.caught_up()
            if controls.cancelled:  # cancelled while queued (or before a restart)
                await events.status("cancelled")
                return None
            await events.status("running")
            # Setting up the control path is infrastructure: a failure here is retried (the
            # request is redelivered); a failure of the job itself is the run's answer.
            mailbox = await asyncio.to_thread(self.mailbox)
            await controls.attach(lambda item: mailbox.put.remote(run_key, item))
            ok, result = await events.run_job(
                train_job,
                request.model_dump(mode="json"),
                self.settings.objects_url,
                str(self.settings.models_dir),
                asdict(PredictionLimits.from_settings(self.settings)),
                mailbox,
                num_cpus=self.settings.train_num_cpus,
                num_gpus=self.settings.train_num_gpus,
            )
        finally:
            await controls.stop()
            if mailbox is not None:
                mailbox.drop.remote(run_key)
        if not ok:
            return None
        if isinstance(result, TrainingStopped):
            # Checkpoints written so far stay in the store; no next stages.
            await events.log(f"training cancelled after step {result.step}")
            await events.status("cancelled")
            return None
        return result.summary


def make_handler(bus: Bus, settings: Settings):
    return TrainerService(bus, settings).on_train_request

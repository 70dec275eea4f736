"""Influence service: translates influence requests into influence jobs on Ray and the
resulting matrices into result events. No maths here (see methods/)."""

from __future__ import annotations

import asyncio
import logging

from nats.aio.msg import Msg

from inflab.common.bus import Bus
from inflab.common.compute import describe_error, run_streaming
from inflab.common.events import StageEvents
from inflab.common.messages import InfluenceMatrix, InfluenceRequest
from inflab.common.settings import Settings
from inflab.influence.job import influence_job
from inflab.influence.methods import METHODS

log = logging.getLogger(__name__)

SERVICE = "influence"
STAGE = "influence"


class InfluenceService:
    def __init__(self, bus: Bus, settings: Settings):
        self.bus = bus
        self.settings = settings

    async def on_influence_request(self, request: InfluenceRequest, msg: Msg | None = None) -> None:
        events = StageEvents(self.bus, request.run_id, STAGE, method=request.method)
        if request.method not in METHODS:
            await events.status(
                "failed", error=f"unknown influence method {request.method!r}; known: {sorted(METHODS)}"
            )
            return
        await events.status("running")
        try:
            matrices = await run_streaming(
                influence_job,
                request.model_dump(mode="json"),
                self.settings.objects_url,
                str(self.settings.models_dir),
                num_cpus=self.settings.influence_num_cpus,
                on_event=events.forward,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("influence failed for run %s", request.run_id)
            await events.status("failed", error=describe_error(exc))
            return
        for matrix in matrices:
            await events.publish("result", influence=InfluenceMatrix.model_validate(matrix))
        await events.status("completed")


def make_handler(bus: Bus, settings: Settings):
    return InfluenceService(bus, settings).on_influence_request

"""Queueing a run's inference and influence stages once its training result is stored.

Only the gateway publishes job requests (a worker's credential cannot), so the trainer
reports its result and the gateway, on storing it, queues the next stages: built from
the run's own stored spec and the training's checkpoints, signed, with message ids
``{run_id}:inference`` and ``{run_id}:influence:{method}``. It is called for a
redelivered result too (JetStream drops the repeated message ids), so a gateway that
stopped between storing the result and publishing still queues them.
"""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inflab.core.bus import Bus
from inflab.core.db.models import Run
from inflab.core.messages import InferenceRequest, InfluenceRequest, ResultEvent, RunSpec
from inflab.core.vocabulary import TERMINAL_STATUSES

log = logging.getLogger(__name__)


def is_training_result(event: object) -> bool:
    return isinstance(event, ResultEvent) and event.stage == "train" and event.training is not None


async def queue_next_stages(bus: Bus, sessionmaker: async_sessionmaker[AsyncSession], event: ResultEvent) -> None:
    async with sessionmaker() as session:
        run = await session.get(Run, event.run_id)
    if run is None or run.status in TERMINAL_STATUSES:
        return  # unknown, or ended meanwhile (a cancel): nothing more to run
    checkpoints = event.training.checkpoints
    if not checkpoints:
        log.warning("run %s: training result without checkpoints; next stages not queued", run.id)
        return
    spec = RunSpec.model_validate(run.config)
    await bus.publish_request(
        "inference",
        InferenceRequest(run_id=run.id, owner_id=run.owner_id, spec=spec, adapter=checkpoints[-1]),
        msg_id=f"{run.id}:inference",
    )
    for method in spec.influence_methods:
        await bus.publish_request(
            "influence",
            InfluenceRequest(run_id=run.id, owner_id=run.owner_id, spec=spec, method=method, checkpoints=checkpoints),
            msg_id=f"{run.id}:influence:{method}",
        )

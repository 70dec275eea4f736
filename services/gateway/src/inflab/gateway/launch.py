"""Starting a run of an experiment: the run row and its queued event, committed, then the
train request on JetStream. Shared by ``POST /api/experiments/{id}/runs`` and pipelines'
NATS submissions (:mod:`inflab.gateway.submissions`)."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timezone
from uuid import UUID

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from inflab.common.bus import Bus
from inflab.common.db.models import Experiment, Run
from inflab.common.messages import StatusEvent, TrainRequest
from inflab.common.settings import Settings
from inflab.gateway.estimates import UnknownModelSize, estimate
from inflab.gateway.notifier import RunNotifier
from inflab.gateway.persistence import finish_run, insert_event
from inflab.gateway.run_state import initial_stages
from inflab.gateway.specs import experiment_spec

log = logging.getLogger(__name__)


class QueueFailed(Exception):
    """The train request could not be published; the run has been marked failed."""


async def launch_run(
    session: AsyncSession,
    bus: Bus,
    notifier: RunNotifier,
    settings: Settings,
    owner_id: UUID,
    experiment: Experiment,
    run_id: UUID | None = None,
) -> Run:
    """Create and queue a run of ``experiment`` (the train request is signed: see
    :meth:`Bus.publish_request`)."""
    spec = experiment_spec(experiment)
    try:
        run_estimate = estimate(spec.model_id, spec.training_data, spec.hyperparams, settings).model_dump(mode="json")
    except UnknownModelSize:
        run_estimate = None  # not knowing the model's size is no reason to refuse the run
    run = Run(
        id=run_id or uuid.uuid4(),
        owner_id=owner_id,
        experiment_id=experiment.id,
        status="queued",
        config=spec.model_dump(mode="json"),
        stages=initial_stages(spec),
        progress=0.0,
        estimate=run_estimate,
    )
    session.add(run)
    await session.flush()
    queued = StatusEvent(run_id=run.id, stage="run", status="queued")
    await insert_event(session, queued)
    # Committed before publishing: the trainer's first event must find the run.
    await session.commit()
    try:
        # The run id is the message id, so a retried publish is deduplicated by JetStream.
        await bus.publish_request("train", TrainRequest(run_id=run.id, owner_id=owner_id, spec=spec), msg_id=str(run.id))
    except Exception as exc:
        log.exception("could not queue run %s", run.id)
        locked = await session.scalar(
            select(Run).where(Run.id == run.id).with_for_update().execution_options(populate_existing=True)
        )
        await finish_run(session, locked, "failed", datetime.now(timezone.utc), f"could not queue the run: {exc!r}")
        await session.commit()
        notifier.notify(run.id)
        raise QueueFailed(str(exc)) from exc
    return run

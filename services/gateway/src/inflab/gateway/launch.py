"""Starting a run of an experiment: the run row and its queued event, committed together;
the dispatcher (:mod:`inflab.gateway.dispatch`) then hands the train request to JetStream.
Shared by ``POST /api/experiments/{id}/runs`` and pipelines' NATS submissions
(:mod:`inflab.gateway.submissions`).

Nothing is published here: the committed row is the outbox entry, so a gateway that dies
right after the commit still gets the run trained (the next dispatcher round publishes
it), and NATS being away does not refuse the run (it waits in Postgres).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from uuid import UUID

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from inflab.core.db.models import Experiment, Run, RunEventRow
from inflab.core.messages import RunSpec, StatusEvent
from inflab.core.settings import Settings
from inflab.gateway.dispatch import Dispatcher, kill_after_commit_if_asked
from inflab.gateway.estimates import UnknownModelSize, estimate
from inflab.gateway.persistence import insert_event
from inflab.gateway.quotas import check_active_runs, check_estimated_duration, lock_user_runs
from inflab.gateway.run_state import initial_stages
from inflab.gateway.specs import body_error, experiment_spec, job_message_bytes, model_id_error

log = logging.getLogger(__name__)


class RunRefused(Exception):
    """The run cannot start as asked; ``errors`` is a 422's list (model, size)."""

    def __init__(self, errors: list[dict]) -> None:
        super().__init__("; ".join(e["msg"] for e in errors))
        self.errors = errors


class IdempotencyKeyReused(Exception):
    """The ``Idempotency-Key`` already started a run of another experiment."""


@dataclass(frozen=True)
class StartedRun:
    run: Run
    #: False when an earlier request with the same idempotency key made the run.
    created: bool


async def start_run(
    session: AsyncSession,
    dispatcher: Dispatcher,
    settings: Settings,
    owner_id: UUID,
    experiment: Experiment,
    run_id: UUID | None = None,
    idempotency_key: str | None = None,
    max_message_bytes: int | None = None,
) -> StartedRun:
    """Create and queue a run of ``experiment``, or find the one ``idempotency_key``
    already made. Raises :class:`RunRefused` (the model is no longer allowed, the spec
    is too large for NATS), :class:`~inflab.gateway.quotas.QuotaExceeded` or
    :class:`IdempotencyKeyReused`."""
    # What needs no lock first (the spec, its refusals, the estimate: CPU work), so the
    # per-user lock below is held only for the reads and writes it serialises.
    spec = experiment_spec(experiment)
    refused = run_refusals(spec, settings, max_message_bytes)
    try:
        run_estimate = estimate(spec.model_id, spec.training_data, spec.hyperparams, settings).model_dump(mode="json")
    except UnknownModelSize:
        run_estimate = None  # not knowing the model's size is no reason to refuse the run
    await lock_user_runs(session, owner_id)
    if idempotency_key is not None:
        earlier = await session.scalar(
            select(Run).where(Run.owner_id == owner_id, Run.idempotency_key == idempotency_key)
        )
        if earlier is not None:
            if earlier.experiment_id != experiment.id:
                raise IdempotencyKeyReused()
            return StartedRun(earlier, created=False)
    if refused:
        raise RunRefused(refused)
    await check_active_runs(session, owner_id, settings)
    check_estimated_duration(run_estimate, settings)
    run = Run(
        id=run_id or uuid.uuid4(),
        owner_id=owner_id,
        experiment_id=experiment.id,
        status="queued",
        config=spec.model_dump(mode="json"),
        stages=initial_stages(spec),
        progress=0.0,
        estimate=run_estimate,
        dispatch_queue=settings.subject_prefix,
        idempotency_key=idempotency_key,
    )
    session.add(run)
    await session.flush()
    await insert_event(session, StatusEvent(run_id=run.id, stage="run", status="queued"))
    await session.commit()
    kill_after_commit_if_asked(settings)
    dispatcher.poke_queued()
    return StartedRun(run, created=True)


def run_refusals(spec: RunSpec, settings: Settings, max_message_bytes: int | None) -> list[dict]:
    """What makes a stored experiment unfit to run now (it was valid when saved, but the
    allow-list or the NATS limit may have changed since)."""
    errors = []
    model_error = model_id_error(spec.model_id, settings)
    if model_error is not None:
        errors.append(model_error)
    if max_message_bytes is not None and job_message_bytes(spec) > max_message_bytes:
        errors.append(body_error((), f"the experiment is too large for one job message (at most "
                                     f"{max_message_bytes} bytes): use fewer or shorter training pairs and "
                                     "evaluation questions", "too_long"))
    return errors


async def queued_event(session: AsyncSession, run_id: UUID) -> StatusEvent | None:
    """The run's stored ``queued`` status event (to announce it again, same event id)."""
    payload = await session.scalar(
        select(RunEventRow.payload)
        .where(RunEventRow.run_id == run_id, RunEventRow.stage == "run", RunEventRow.kind == "status")
        .order_by(RunEventRow.id)
        .limit(1)
    )
    return StatusEvent.model_validate(payload) if payload is not None else None

"""Validations of a run's attributions against retraining (LDS and removal test): their
cost estimate, starting one, reading them, cancelling one. The logic is in
:mod:`inflab.gateway.validations`; the retrainings run on the trainers' Ray cluster."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, HTTPException, Path, status
from pydantic import BaseModel
from sqlalchemy import select

from inflab.core.db.models import Run, Validation
from inflab.core.messages import ControlMessage, RetrainingJob, StatusEvent, RunSpec, ValidationRequest, ValidationSettings
from inflab.core.vocabulary import ACTIVE_VALIDATION_STATUSES, ValidationStatus
from inflab.gateway.deps import BusDep, NotifierDep, OwnedRun, SessionDep, SettingsDep
from inflab.gateway.influence import MatrixUnavailable, ObjectStoreDep
from inflab.gateway.persistence import insert_event
from inflab.gateway.validations import (
    ValidationRefused,
    plan_to_json,
    prepare,
    task_resources,
)

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/runs/{run_id}/validations", tags=["validations"])

RESPONSES = {
    404: {"description": "No such run or validation, or not yours."},
    409: {"description": "The run has no results to validate (not completed, or no influence results), or a "
                         "validation of it is already under way."},
    422: {"description": "Invalid settings (subsets < 2, alpha outside (0, 1), ...): the detail names the field."},
}


class MatrixValidation(BaseModel):
    """One influence matrix (or BM25's) checked against retraining."""

    method: str
    variant: str
    #: Mean over the evaluation questions of Spearman's rho between the predicted subset
    #: effect (sum of the subset's scores) and the measured answer loss, negated (so that
    #: 1 is a perfect prediction and 0 none), with its bootstrap 95% interval.
    lds: float | None
    lds_low: float | None
    lds_high: float | None
    #: Mean loss after removing each question's top-k positive pairs minus after removing
    #: k random ones (positive: the method's top pairs matter more than chance).
    removal_over_random: float | None
    removal_increase_top: float | None
    removal_increase_random: float | None
    #: Share of questions where removing the top-k raised the loss more than random.
    removal_win_rate: float | None


class ValidationEstimate(BaseModel):
    retrainings: int
    subsets: int
    removals: int
    training_pairs_trained: int
    workers: int
    estimated_compute_s: float | None
    estimated_duration_s: float | None
    estimated_cost_usd: float | None
    assumptions: list[str]
    #: The matrices it would check (``method/variant``), BM25 included.
    matrices: list[str]


class ValidationOut(BaseModel):
    id: UUID
    run_id: UUID
    status: ValidationStatus
    settings: ValidationSettings
    estimate: dict | None
    progress: float
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    #: Per matrix, best LDS first (once completed).
    results: list[MatrixValidation]
    #: Where every retraining's losses, the plan and per-question figures are stored.
    detail_key: str | None
    #: That detail, with ``GET .../validations/{id}`` only.
    detail: dict | None = None


def validation_out(row: Validation, detail: dict | None = None) -> ValidationOut:
    results = [MatrixValidation(**entry) for entry in (row.summary or {}).values()]
    results.sort(key=lambda r: (r.lds is None, -(r.lds or 0.0)))
    return ValidationOut(
        id=row.id, run_id=row.run_id, status=row.status, settings=ValidationSettings(**row.settings),
        estimate=row.estimate, progress=row.progress, error=row.error, created_at=row.created_at,
        started_at=row.started_at, finished_at=row.finished_at, results=results, detail_key=row.detail_key,
        detail=detail,
    )


async def _prepared(session, store, run, body: ValidationSettings, settings):
    try:
        return await prepare(session, store, run, body, settings)
    except ValidationRefused as exc:
        raise HTTPException(exc.status_code, exc.message) from None
    except MatrixUnavailable as exc:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, str(exc)) from None


@router.post("/estimate", responses=RESPONSES)
async def estimate_validation(
    run: OwnedRun, body: ValidationSettings, session: SessionDep, store: ObjectStoreDep, settings: SettingsDep,
) -> ValidationEstimate:
    """What a validation with these settings would run and cost, before starting it."""
    prepared = await _prepared(session, store, run, body, settings)
    return ValidationEstimate(**prepared.estimate, matrices=prepared.matrix_names)


@router.post("", status_code=status.HTTP_202_ACCEPTED, responses=RESPONSES)
async def start_validation(
    run: OwnedRun, body: ValidationSettings, session: SessionDep, store: ObjectStoreDep, settings: SettingsDep,
    bus: BusDep, notifier: NotifierDep,
) -> ValidationOut:
    """Check the run's attributions against retraining: the LDS over ``subsets`` random
    subsets of a fraction ``alpha`` of the training pairs, and per evaluation question the
    removal of its top ``removal_k`` pairs under each method against ``removal_k`` random
    ones; every influence matrix of the run and BM25's. Its events (stage ``validation``)
    come on the run's event stream."""
    active = await session.scalar(
        select(Validation.id)
        .where(Validation.run_id == run.id, Validation.status.in_(ACTIVE_VALIDATION_STATUSES))
        .limit(1)
    )
    if active is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"validation {active} of this run is still under way")
    prepared = await _prepared(session, store, run, body, settings)
    row = Validation(
        run_id=run.id, status="queued", settings=body.model_dump(), plan=plan_to_json(prepared.plan),
        estimate={**prepared.estimate, "matrices": prepared.matrix_names}, progress=0.0,
    )
    session.add(row)
    await session.commit()
    await session.refresh(row)
    everything = set(range(prepared.plan.n_train))
    request = ValidationRequest(
        run_id=run.id, owner_id=run.owner_id, validation_id=row.id, spec=RunSpec.model_validate(run.config),
        retrainings=[RetrainingJob(key=r.key, drop=sorted(everything - set(r.keep))) for r in prepared.plan.retrainings],
        targets=prepared.targets, resources=task_resources(run.estimate, settings),
    )
    try:
        await bus.publish_request("validation", request, msg_id=f"{run.id}:validation:{row.id}")
    except Exception as exc:
        log.exception("could not queue validation %s of run %s", row.id, run.id)
        row.status, row.error, row.finished_at = "failed", f"could not queue it: {type(exc).__name__}", datetime.now(timezone.utc)
        await session.commit()
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "could not queue the validation; try again") from exc
    notifier.notify(run.id)
    return validation_out(row)


@router.get("", responses=RESPONSES)
async def list_validations(run: OwnedRun, session: SessionDep) -> list[ValidationOut]:
    """The run's validations, newest first."""
    rows = await session.scalars(
        select(Validation).where(Validation.run_id == run.id).order_by(Validation.created_at.desc())
    )
    return [validation_out(row) for row in rows]


async def _owned_validation(session, run, validation_id: str, lock: bool = False) -> Validation:
    try:
        wanted = UUID(validation_id)
    except ValueError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such validation") from None
    query = select(Validation).where(Validation.id == wanted, Validation.run_id == run.id)
    if lock:
        query = query.with_for_update().execution_options(populate_existing=True)
    row = await session.scalar(query)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such validation")
    return row


@router.get("/{validation_id}", responses=RESPONSES)
async def get_validation(
    run: OwnedRun, validation_id: Annotated[str, Path()], session: SessionDep, store: ObjectStoreDep,
) -> ValidationOut:
    """One validation, with its detail from the object store once completed: the plan
    (which pairs each retraining kept, the subsets' seeds), every retraining's losses and
    where and how long it ran, and the per-question LDS and removal figures."""
    row = await _owned_validation(session, run, validation_id)
    detail = None
    if row.detail_key:
        try:
            detail = json.loads(await store.get_async(row.detail_key))
        except FileNotFoundError:
            raise HTTPException(status.HTTP_502_BAD_GATEWAY, f"{row.detail_key}: not found in the object store") from None
    return validation_out(row, detail)


@router.post("/{validation_id}/cancel", status_code=status.HTTP_202_ACCEPTED, responses=RESPONSES)
async def cancel_validation(
    run: OwnedRun, validation_id: Annotated[str, Path()], session: SessionDep, bus: BusDep, notifier: NotifierDep,
) -> ValidationOut:
    """Stop a validation: its retrainings are cancelled on Ray and it ends ``cancelled``."""
    # The run's row first, then the validation's: the persister's order (it locks the runs
    # of a batch before applying their events), so the two never deadlock; and the status
    # checked is the one this transaction will overwrite.
    await session.execute(select(Run.id).where(Run.id == run.id).with_for_update())
    row = await _owned_validation(session, run, validation_id, lock=True)
    if row.status not in ACTIVE_VALIDATION_STATUSES:
        raise HTTPException(status.HTTP_409_CONFLICT, f"the validation has already ended ({row.status})")
    message = ControlMessage(run_id=run.id, action="cancel_validation", validation_id=row.id)
    try:
        await bus.publish(bus.subjects.control(run.id), message, msg_id=str(message.request_id))
    except Exception as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "could not reach the control stream; try again") from exc
    row.status, row.finished_at = "cancelled", datetime.now(timezone.utc)
    row.error = "cancelled by its owner"
    # Its own status event, so the run's event stream says so at once.
    await insert_event(session, StatusEvent(run_id=run.id, stage="validation", status="cancelled", error=row.error))
    await session.commit()
    notifier.notify(run.id)
    return validation_out(row)

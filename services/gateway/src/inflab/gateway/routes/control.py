"""Steering a run while it trains: changing hyperparameters and cancelling.

Both publish a ``ControlMessage`` on the run's control subject (message id = request id,
so a retried publish is deduplicated). The control stream keeps it, so a trainer that
picks the job up, or resumes it after a crash, later still replays every instruction in
order. The effect comes back from the trainer as events: a ``params`` event naming the
request and the optimizer step it took effect at, or the training stage's ``cancelled``.

A cancel that no trainer would act on ends the run here, at once: when training has not
started (the run is queued: perhaps no trainer is up, and the researcher must not wait
for one), or has already ended (inference and influence do not listen for control). The
message is still published first, so a trainer that takes the queued job later sees the
cancel before its first step and does not train. While a trainer holds the training
stage (running or checkpointing), it reports ``cancelled`` itself, at its next step.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy import select

from inflab.core.bus import Bus
from inflab.core.db.models import Run
from inflab.core.messages import ControlMessage, Hyperparams, RuntimeParams
from inflab.gateway.deps import BusDep, DispatcherDep, NotifierDep, OwnedRun, SessionDep
from inflab.gateway.persistence import finish_run
from inflab.core.vocabulary import ACTIVE_STATUSES, TERMINAL_STATUSES
from inflab.gateway.schemas import ControlAccepted
from inflab.gateway.specs import body_error, body_errors

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/runs/{run_id}", tags=["runs"])

#: What can change while a run trains (RuntimeParams says why the rest cannot).
CHANGEABLE = ", ".join(RuntimeParams.model_fields)

RESPONSES = {
    404: {"description": "No such run, or not yours."},
    409: {"description": "The run (or its training) has already ended."},
    503: {"description": "The control message could not be published; nothing changed."},
}


async def runtime_params(body: Annotated[dict[str, Any], Body()]) -> RuntimeParams:
    """The body as RuntimeParams, with a 422 that says why a known hyperparameter is refused
    (the contract's own error would only call it an extra field)."""
    refused = [
        body_error(
            (name,),
            f"{name} cannot change while a run trains (it fixes the model, the data or its order); "
            f"only {CHANGEABLE} can"
            if name in Hyperparams.model_fields
            else f"not a hyperparameter; only {CHANGEABLE} can change while a run trains",
            "extra_forbidden",
        )
        for name in body
        if name not in RuntimeParams.model_fields
    ]
    if refused:
        raise RequestValidationError(refused)
    try:
        return RuntimeParams.model_validate(body)
    except ValidationError as exc:
        raise body_errors(exc) from None


RuntimeParamsBody = Annotated[RuntimeParams, Depends(runtime_params)]


async def _publish(bus: Bus, message: ControlMessage) -> None:
    try:
        await bus.publish(bus.subjects.control(message.run_id), message, msg_id=str(message.request_id))
    except Exception as exc:
        log.exception("could not publish %s for run %s", message.action, message.run_id)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "could not reach the control stream; try again") from exc


def _accepted(message: ControlMessage, run: Run) -> ControlAccepted:
    return ControlAccepted(request_id=message.request_id, run_id=run.id, action=message.action, run_status=run.status)


@router.patch(
    "/params",
    status_code=status.HTTP_202_ACCEPTED,
    responses=RESPONSES,
    # The body is parsed by ``runtime_params``; document it as what it becomes.
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": RuntimeParams.model_json_schema()}}}
    },
)
async def update_run_params(run: OwnedRun, params: RuntimeParamsBody, bus: BusDep) -> ControlAccepted:
    """Change hyperparameters of a training run from its next optimizer step on (a queued
    run's from its first). Only ``learning_rate`` and ``weight_decay`` can change; the
    trainer answers with a ``params`` event carrying this ``request_id``, the old and new
    values and the step."""
    if run.status in TERMINAL_STATUSES:
        raise HTTPException(status.HTTP_409_CONFLICT, f"the run has already ended ({run.status})")
    if run.stages.get("train") in TERMINAL_STATUSES:
        raise HTTPException(status.HTTP_409_CONFLICT, f"training has already ended ({run.stages['train']})")
    message = ControlMessage(run_id=run.id, action="update_params", params=params)
    await _publish(bus, message)
    return _accepted(message, run)


@router.post("/cancel", status_code=status.HTTP_202_ACCEPTED, responses=RESPONSES)
async def cancel_run(
    run: OwnedRun, session: SessionDep, bus: BusDep, notifier: NotifierDep, dispatcher: DispatcherDep
) -> ControlAccepted:
    """Stop the run. A training run stops at its next step, keeps its checkpoints and is
    marked cancelled by the trainer; a run no trainer holds is cancelled at once."""
    if run.status in TERMINAL_STATUSES:
        raise HTTPException(status.HTTP_409_CONFLICT, f"the run has already ended ({run.status})")
    message = ControlMessage(run_id=run.id, action="cancel")
    await _publish(bus, message)
    if run.stages.get("train") not in ACTIVE_STATUSES:
        # Re-read under the row lock the persister takes: a trainer's "running" may have
        # been stored meanwhile, and then the trainer is the one to end the run.
        run = await session.scalar(
            select(Run).where(Run.id == run.id).with_for_update().execution_options(populate_existing=True)
        )
        if run.stages.get("train") not in ACTIVE_STATUSES:
            await finish_run(session, run, "cancelled", datetime.now(timezone.utc))
        await session.commit()
        notifier.notify(run.id)
        dispatcher.poke()  # its place in the queue is free
    return _accepted(message, run)

"""Predictions during training: the sampled prompts' answers at each sampling point, like
W&B prediction tables, paged and grouped by epoch.

Epochs are 1-based and a sample belongs to the epoch it was taken in: the trainer reports
fractional epochs (1.0 at the end of the first, 1.5 half-way through the second), so a
sample's epoch is the ceiling of the reported one, and 0 means before the first step.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import Integer, func, select

from inflab.core.db.models import Prediction
from inflab.gateway.deps import OwnedRun, SessionDep
from inflab.gateway.schemas import PredictionEpoch, PredictionOut, PredictionPage

router = APIRouter(prefix="/api/runs/{run_id}/predictions", tags=["predictions"])

NOT_FOUND = {404: {"description": "No such run, or not yours."}}


def _epoch_number():
    # The one definition of a sample's epoch, shared by the filter and the listing.
    return func.ceil(Prediction.epoch).cast(Integer)


@router.get("", responses=NOT_FOUND)
async def list_predictions(
    run: OwnedRun,
    session: SessionDep,
    epoch: Annotated[int | None, Query(ge=0, description="Only samples taken in this (1-based) epoch.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> PredictionPage:
    """Ordered by step, then prompt id."""
    where = [Prediction.run_id == run.id]
    if epoch is not None:
        where.append(_epoch_number() == epoch)
    total = await session.scalar(select(func.count()).select_from(Prediction).where(*where))
    rows = await session.scalars(
        select(Prediction).where(*where).order_by(Prediction.step, Prediction.prompt_id).limit(limit).offset(offset)
    )
    return PredictionPage(
        total=total,
        limit=limit,
        offset=offset,
        items=[PredictionOut.model_validate(row, from_attributes=True) for row in rows],
    )


@router.get("/epochs", responses=NOT_FOUND)
async def list_prediction_epochs(run: OwnedRun, session: SessionDep) -> list[PredictionEpoch]:
    """The epochs that have predictions, in order, with how many each has."""
    number = _epoch_number().label("epoch")
    rows = await session.execute(
        select(number, func.count().label("count"))
        .where(Prediction.run_id == run.id)
        .group_by(number)
        .order_by(number)
    )
    return [PredictionEpoch(epoch=e, count=c) for e, c in rows]

"""Experiments: a researcher's training pairs, evaluation questions and run settings."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status
from sqlalchemy import func, select

from inflab.common.db.models import Experiment
from inflab.gateway.deps import CurrentUser, OwnedExperiment, SessionDep, SettingsDep
from inflab.gateway.schemas import ExperimentCreate, ExperimentOut, ExperimentSummary
from inflab.gateway.specs import validated_spec

router = APIRouter(prefix="/api/experiments", tags=["experiments"])


def experiment_out(experiment: Experiment) -> ExperimentOut:
    return ExperimentOut.model_validate(experiment, from_attributes=True)


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_experiment(
    body: ExperimentCreate, session: SessionDep, user: CurrentUser, settings: SettingsDep
) -> ExperimentOut:
    spec = validated_spec(body.spec_fields(settings), settings)
    # Stored with every default resolved, so the experiment means the same thing later
    # even if the server's defaults change.
    experiment = Experiment(
        owner_id=user.id,
        name=body.name,
        description=body.description,
        model_id=spec.model_id,
        training_data=[pair.model_dump(mode="json") for pair in spec.training_data],
        eval_data=[question.model_dump(mode="json") for question in spec.eval_data],
        hyperparams=spec.hyperparams.model_dump(mode="json"),
        influence_methods=spec.influence_methods,
        few_shot_k=spec.few_shot_k,
        max_new_tokens=spec.max_new_tokens,
        predictions=spec.predictions.model_dump(mode="json"),
    )
    session.add(experiment)
    await session.commit()
    await session.refresh(experiment)  # server-side timestamps
    return experiment_out(experiment)


@router.get("")
async def list_experiments(
    session: SessionDep,
    user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[ExperimentSummary]:
    """Newest first, without the data itself (that is what ``get_experiment`` is for)."""
    rows = await session.execute(
        select(
            Experiment.id,
            Experiment.name,
            Experiment.description,
            Experiment.model_id,
            func.jsonb_array_length(Experiment.training_data).label("training_pairs"),
            func.jsonb_array_length(Experiment.eval_data).label("eval_questions"),
            Experiment.created_at,
            Experiment.updated_at,
        )
        .where(Experiment.owner_id == user.id)
        .order_by(Experiment.created_at.desc(), Experiment.id)
        .limit(limit)
        .offset(offset)
    )
    return [ExperimentSummary.model_validate(row, from_attributes=True) for row in rows]


@router.get("/{experiment_id}", responses={404: {"description": "No such experiment, or not yours."}})
async def get_experiment(experiment: OwnedExperiment) -> ExperimentOut:
    return experiment_out(experiment)

"""Experiments: a researcher's training pairs, evaluation questions and run settings.

Every write is validated as the runs it will start are (the contract's ``RunSpec``),
against this deployment's limits (:mod:`inflab.gateway.limits`), its allowed models and
the NATS message size (:mod:`inflab.gateway.specs`). Deleting an experiment
keeps its runs: they hold their own config snapshot and stay in the run history.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from inflab.core.db.models import Experiment
from inflab.core.messages import RunSpec
from inflab.gateway.deps import BusDep, CallerDep, CurrentUser, OwnedExperiment, SessionDep, SettingsDep
from inflab.gateway.experiment_list import ExperimentSort, experiment_list_query, summary_out
from inflab.gateway.imports import MAX_REPORTED_ERRORS, TooDeep, number_and_dedupe, parse_rows
from inflab.gateway.schemas import (
    ExperimentCreate,
    ExperimentOut,
    ExperimentSummary,
    ExperimentUpdate,
    ImportReport,
    ImportRequest,
    RowError,
)
from inflab.gateway.influence import ObjectStoreDep
from inflab.gateway.specs import body_error, check_stored_models, experiment_spec, validated_spec

router = APIRouter(prefix="/api/experiments", tags=["experiments"])

NOT_FOUND = {404: {"description": "No such experiment, or not yours."}}


def experiment_out(experiment: Experiment) -> ExperimentOut:
    return ExperimentOut.model_validate(experiment, from_attributes=True)


def _apply_spec(experiment: Experiment, spec: RunSpec) -> None:
    # Stored with every default resolved, so the experiment means the same thing later
    # even if the server's defaults change.
    experiment.model_id = spec.model_id
    experiment.training_data = [pair.model_dump(mode="json") for pair in spec.training_data]
    experiment.eval_data = [question.model_dump(mode="json") for question in spec.eval_data]
    experiment.hyperparams = spec.hyperparams.model_dump(mode="json")
    experiment.influence_methods = spec.influence_methods
    experiment.few_shot_k = spec.few_shot_k
    experiment.max_new_tokens = spec.max_new_tokens
    experiment.predictions = spec.predictions.model_dump(mode="json")
    experiment.influence_args = spec.influence_args.model_dump(mode="json")
    experiment.benchmark = None if spec.benchmark is None else spec.benchmark.model_dump(mode="json")


async def _saved(session: AsyncSession, experiment: Experiment) -> ExperimentOut:
    await session.commit()
    await session.refresh(experiment)  # server-side timestamps
    return experiment_out(experiment)


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_experiment(
    body: ExperimentCreate, session: SessionDep, caller: CallerDep, settings: SettingsDep, bus: BusDep,
    store: ObjectStoreDep,
) -> ExperimentOut:
    spec = validated_spec(body.spec_fields(settings), settings, bus.max_event_bytes)
    await check_stored_models(spec, store)
    # An API token that creates an experiment is remembered: a "submit" token may then
    # start runs of it and read them, and nothing else.
    experiment = Experiment(owner_id=caller.user.id, name=body.name, description=body.description,
                            api_token_id=caller.api_token_id)
    _apply_spec(experiment, spec)
    session.add(experiment)
    return await _saved(session, experiment)


@router.get("")
async def list_experiments(
    session: SessionDep,
    user: CurrentUser,
    q: Annotated[str | None, Query(max_length=200, description="Only experiments whose name or description "
                                   "contains this text (case-insensitive).")] = None,
    sort: Annotated[ExperimentSort, Query(description="``updated`` (when the experiment last changed), ``name``, "
                                          "``last_run_status`` or ``created``.")] = "updated",
    order: Annotated[Literal["asc", "desc"] | None, Query(description="The direction; by default newest first "
                                                          "for the dates, A to Z for the name, and running runs "
                                                          "first for the status.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> list[ExperimentSummary]:
    """The experiments, without their data (that is what ``get_experiment`` is for), each
    with how many runs it has and its most recent run. One query, whatever the page size."""
    rows = await session.execute(experiment_list_query(user.id, q, sort, order).limit(limit).offset(offset))
    return [summary_out(row) for row in rows]


@router.get("/{experiment_id}", responses=NOT_FOUND)
async def get_experiment(experiment: OwnedExperiment) -> ExperimentOut:
    return experiment_out(experiment)


def _stored_fields(experiment: Experiment) -> dict[str, Any]:
    return experiment_spec(experiment).model_dump()


@router.patch("/{experiment_id}", responses=NOT_FOUND)
async def update_experiment(
    body: ExperimentUpdate, experiment: OwnedExperiment, session: SessionDep, settings: SettingsDep, bus: BusDep,
    store: ObjectStoreDep,
) -> ExperimentOut:
    """Change the fields named; see ``ExperimentUpdate`` for how each is applied. A change
    of the influence methods or their arguments checks the object-store models they name
    again, as creating the experiment did."""
    changes = body.model_dump(exclude_unset=True)
    for name in ("name", "description"):  # null means "leave as it is", as for the rest
        if changes.get(name) is not None:
            setattr(experiment, name, changes[name])
    fields = _stored_fields(experiment)
    for name, value in changes.items():
        if name in ("name", "description") or value is None:
            continue
        if name in ("hyperparams", "predictions"):
            fields[name] = {**fields[name], **{k: v for k, v in value.items() if v is not None}}
        elif name == "influence_args":
            # Per method; within one, an argument named as null is a value (several mean
            # "the method's own default"), so it replaces the stored one too.
            # A method the stored experiment predates is patched onto its defaults.
            fields[name] = {
                method: {} if value.get(method, ...) is None
                else {**fields[name].get(method, {}), **value.get(method, {})}
                for method in {**fields[name], **value}
            }
        else:
            fields[name] = value
    spec = validated_spec(fields, settings, bus.max_event_bytes)
    if changes.get("influence_args") is not None or changes.get("influence_methods") is not None:
        await check_stored_models(spec, store)
    _apply_spec(experiment, spec)
    return await _saved(session, experiment)


@router.delete("/{experiment_id}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
async def delete_experiment(experiment: OwnedExperiment, session: SessionDep) -> Response:
    """Its runs stay (with their config snapshot), no longer linked to an experiment."""
    await session.delete(experiment)
    await session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{experiment_id}/duplicate", status_code=status.HTTP_201_CREATED, responses=NOT_FOUND)
async def duplicate_experiment(experiment: OwnedExperiment, session: SessionDep, user: CurrentUser) -> ExperimentOut:
    """A copy named ``<name> (copy)``, with the same data and settings and no runs."""
    copy = Experiment(
        owner_id=user.id,
        name=f"{experiment.name[:193]} (copy)",
        description=experiment.description,
    )
    _apply_spec(copy, experiment_spec(experiment))
    session.add(copy)
    return await _saved(session, copy)


@router.post(
    "/{experiment_id}/import",
    responses={
        **NOT_FOUND,
        400: {"model": ImportReport, "description": "Some rows are invalid; nothing was imported."},
        422: {"description": "Invalid request, a JSONL line nested too deeply (`content`), or limits exceeded."},
    },
)
async def import_rows(
    body: ImportRequest, experiment: OwnedExperiment, session: SessionDep, settings: SettingsDep, bus: BusDep
) -> ImportReport:
    """Add (or replace) training pairs or evaluation questions from a JSONL or CSV file.

    Every bad row is reported with its line. Unless ``skip_invalid``, one bad row means
    nothing is imported (400 with the report). The experiment as a whole must still meet
    the limits afterwards (422 otherwise)."""
    try:
        parsed = parse_rows(body.content, body.format, body.target, settings.max_text_chars)
    except TooDeep as exc:
        raise RequestValidationError([body_error(("content",), str(exc), "json_too_deep")]) from None
    existing = [] if body.mode == "replace" else list(getattr(experiment, body.target))
    items = number_and_dedupe(existing, parsed, "tr" if body.target == "training_data" else "ev")
    apply = bool(items) and (not parsed.errors or body.skip_invalid)
    if not items and not parsed.errors:
        parsed.errors.append(RowError(row=1, field=None, message="the file holds no rows"))
    if apply:
        fields = _stored_fields(experiment)
        fields[body.target] = existing + items
        _apply_spec(experiment, validated_spec(fields, settings, bus.max_event_bytes))
        await session.commit()
    report = ImportReport(
        target=body.target,
        rows=parsed.rows,
        imported=len(items) if apply else 0,
        applied=apply,
        errors=parsed.errors[:MAX_REPORTED_ERRORS],
        errors_truncated=len(parsed.errors) > MAX_REPORTED_ERRORS,
        training_pairs=len(experiment.training_data),
        eval_questions=len(experiment.eval_data),
    )
    if not apply:
        return JSONResponse(report.model_dump(mode="json"), status_code=status.HTTP_400_BAD_REQUEST)
    return report

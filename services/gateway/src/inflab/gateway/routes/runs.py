"""Runs: starting one, its state, its results and its live event stream."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Header, HTTPException, Query, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from sqlalchemy import exists, select

from inflab.core.db.models import Checkpoint, AnswerRow, InfluenceMatrixRow, Metric, Run, RunEventRow
from inflab.analysis import answer_scores
from inflab.core.messages import Answer, CheckpointRef, RunSpec, TrainingSummary
from inflab.gateway.auth.sessions import still_valid
from inflab.gateway.baselines import run_baselines
from inflab.gateway.deps import (
    BroadcasterDep,
    BusDep,
    CallerDep,
    CurrentUser,
    DispatcherDep,
    OwnedExperiment,
    OwnedRun,
    SessionDep,
    SessionmakerDep,
    SettingsDep,
)
from inflab.gateway.influence import MatrixUnavailable, ObjectStoreDep, matrix_out
from inflab.gateway import launch
from inflab.gateway.launch import IdempotencyKeyReused, RunRefused
from inflab.gateway.quotas import QuotaExceeded
from inflab.core.vocabulary import TERMINAL_STATUSES
from inflab.gateway.schemas import (
    AnswerAggregates,
    AnswerColumnScores,
    BaselineMatrix,
    LossPoint,
    RunOut,
    RunQueued,
    RunResults,
    TrainingResults,
)
from inflab.gateway.broadcast import MAX_EVENT_ID, CountedStream, TooManyStreams, validation_under_way

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api", tags=["runs"])

NOT_FOUND = {404: {"description": "No such run or experiment, or not yours."}}


def run_out(run: Run) -> RunOut:
    return RunOut.model_validate(run, from_attributes=True)


#: What an Idempotency-Key may be: printable ASCII without spaces (a UUID, say).
IDEMPOTENCY_KEY = Header(
    alias="Idempotency-Key",
    min_length=1,
    max_length=200,
    pattern=r"^[!-~]+$",
    description="Makes a retried request safe: a repeat with the same key (from the same user, for the same "
                "experiment) answers with the run the first one started, and starts nothing.",
)


@router.post(
    "/experiments/{experiment_id}/runs",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        **NOT_FOUND,
        422: {"description": "Invalid request: the model is no longer allowed, the experiment is too large for "
                             "a job message, the estimated training is over INFLAB_MAX_RUN_ESTIMATED_S, or the "
                             "Idempotency-Key already started a run of another experiment."},
        429: {"description": "The user has INFLAB_MAX_ACTIVE_RUNS_PER_USER runs queued or running."},
    },
)
async def start_run(
    experiment: OwnedExperiment,
    session: SessionDep,
    user: CurrentUser,
    bus: BusDep,
    dispatcher: DispatcherDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: Annotated[str | None, IDEMPOTENCY_KEY] = None,
) -> RunQueued:
    """Queue a run of the experiment: train, then inference and influence in parallel.
    Runs wait in the gateway's queue and go to the trainers in turn, round-robin by user."""
    try:
        started = await launch.start_run(session, dispatcher, settings, user.id, experiment,
                                           idempotency_key=idempotency_key, max_message_bytes=bus.max_event_bytes)
    except RunRefused as exc:
        raise RequestValidationError(exc.errors) from None
    except QuotaExceeded as exc:
        raise HTTPException(exc.status_code, exc.message) from None
    except IdempotencyKeyReused:
        raise RequestValidationError([{
            "type": "value_error", "loc": ("header", "Idempotency-Key"), "input": None,
            "msg": "this Idempotency-Key already started a run of another experiment: use a new key",
        }]) from None
    if not started.created:
        response.headers["Idempotent-Replayed"] = "true"
    return RunQueued(run_id=started.run.id, status=started.run.status)


@router.get("/runs")
async def list_runs(
    session: SessionDep,
    user: CurrentUser,
    experiment_id: UUID | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[RunOut]:
    """Newest first; only the runs of ``experiment_id`` when given."""
    query = select(Run).where(Run.owner_id == user.id)
    if experiment_id is not None:
        query = query.where(Run.experiment_id == experiment_id)
    runs = await session.scalars(query.order_by(Run.created_at.desc(), Run.id).limit(limit).offset(offset))
    return [run_out(run) for run in runs]


@router.get("/runs/{run_id}", responses=NOT_FOUND)
async def get_run(run: OwnedRun) -> RunOut:
    return run_out(run)


@router.get(
    "/runs/{run_id}/results",
    responses={**NOT_FOUND, 502: {"description": "An influence matrix could not be read from the object store."}},
)
async def get_run_results(run: OwnedRun, session: SessionDep, store: ObjectStoreDep) -> RunResults:
    """What the run has produced so far; complete once its status is ``completed`` (a
    failed run still serves what its completed stages produced). Every influence matrix is
    complete, read from the object store when its result event carried only the summary.
    The BM25 baseline is computed from the run's config, so it is there from the start."""
    answer_rows = await session.scalars(
        select(AnswerRow).where(AnswerRow.run_id == run.id).order_by(AnswerRow.id)
    )
    influence = await session.scalars(
        select(InfluenceMatrixRow)
        .where(InfluenceMatrixRow.run_id == run.id)
        .order_by(InfluenceMatrixRow.method, InfluenceMatrixRow.variant)
    )
    metrics = await session.scalars(select(Metric).where(Metric.run_id == run.id).order_by(Metric.step))
    checkpoints = await session.scalars(
        select(Checkpoint).where(Checkpoint.run_id == run.id).order_by(Checkpoint.step)
    )
    # The training summary is the payload of the trainer's result event (no column of its own).
    summary = await session.scalar(
        select(RunEventRow.payload["training"])
        .where(
            RunEventRow.run_id == run.id,
            RunEventRow.kind == "result",
            RunEventRow.stage == "train",
            RunEventRow.payload["training"].astext.is_not(None),
        )
        .order_by(RunEventRow.id.desc())
        .limit(1)
    )
    try:
        matrices = [await matrix_out(store, r) for r in influence]
    except MatrixUnavailable as exc:
        log.error("results of run %s: %s", run.id, exc)
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, str(exc)) from exc
    answers = [
        Answer(eval_id=g.eval_id, question=g.question, reference=g.reference, base=g.base,
               few_shot=g.few_shot, fine_tuned=g.fine_tuned, scores=g.scores)
        for g in answer_rows
    ]
    # Tokenising and scoring 100 x 1000 texts is CPU work: off the event loop.
    baselines = await asyncio.to_thread(run_baselines, RunSpec.model_validate(run.config))
    return RunResults(
        run_id=run.id,
        status=run.status,
        answers=answers,
        answer_scores=answer_aggregates(answers),
        influence=matrices,
        baselines=[BaselineMatrix.model_validate(b) for b in baselines],
        training=TrainingResults(
            loss_curve=[LossPoint.model_validate(m, from_attributes=True) for m in metrics],
            checkpoints=[
                CheckpointRef(step=c.step, epoch=c.epoch, key=c.key, learning_rate=c.learning_rate, loss=c.loss)
                for c in checkpoints
            ],
            summary=TrainingSummary.model_validate(summary) if summary is not None else None,
        ),
    )


def answer_aggregates(answers: list[Answer]) -> AnswerAggregates:
    def column(name: str) -> AnswerColumnScores:
        scores = [None if a.scores is None else getattr(a.scores, name) for a in answers]
        aggregate = answer_scores.aggregate(None if s is None else s.model_dump() for s in scores)
        return AnswerColumnScores(**dataclasses.asdict(aggregate))

    return AnswerAggregates(base=column("base"), few_shot=column("few_shot"), fine_tuned=column("fine_tuned"))


@router.get(
    "/runs/{run_id}/events",
    response_class=StreamingResponse,
    responses={
        **NOT_FOUND,
        200: {"content": {"text/event-stream": {}}, "description": "The run's events, live."},
        204: {"description": "The run has finished and the client has every event: stop reconnecting."},
        429: {"description": "The user has INFLAB_SSE_MAX_STREAMS_PER_USER event streams open on this server."},
    },
)
async def stream_run_events(
    run: OwnedRun,
    caller: CallerDep,
    session: SessionDep,
    sessionmaker: SessionmakerDep,
    broadcaster: BroadcasterDep,
    settings: SettingsDep,
    last_event_id: Annotated[str | None, Header()] = None,
    after: Annotated[int | None, Query(ge=0, description="Send only events with a larger id.")] = None,
) -> Response:
    """Server-Sent Events: ``id`` is the event's sequence number, ``event`` its kind and
    ``data`` its JSON. Resumes after ``Last-Event-ID`` (or ``after``); ends after the
    run-level terminal status event (a validation of an ended run keeps it open while it
    is under way: its events have stage ``validation``), or when the session or API token that opened it
    ends (re-checked every heartbeat interval)."""
    start = min(max(after or 0, _event_id(last_event_id)), MAX_EVENT_ID)

    async def check() -> bool:
        async with sessionmaker() as session:
            return await still_valid(session, caller, settings)

    async def still_allowed() -> bool:
        # Once per heartbeat for all the streams of one session or token.
        return await broadcaster.still_allowed((caller.session_id, caller.api_token_id), check)

    finished = (
        run.status in TERMINAL_STATUSES
        and not await session.scalar(select(exists().where(RunEventRow.run_id == run.id, RunEventRow.id > start)))
        and not await validation_under_way(session, run.id)
    )
    # The stream reads through the broadcaster's short sessions; hand this one's
    # connection back now rather than hold it for the life of the stream.
    await session.close()
    if finished:
        # EventSource reconnects when a stream ends; 204 is how the spec says "stop".
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    user_id = caller.user.id
    try:
        broadcaster.reserve(user_id)
    except TooManyStreams as exc:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, str(exc)) from None
    return CountedStream(
        broadcaster.stream(run.id, start, still_allowed),
        release=lambda: broadcaster.release(user_id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _event_id(header: str | None) -> int:
    # Our ids are integers; anything else cannot be ours, so start from the beginning.
    try:
        return max(int(header), 0) if header else 0
    except ValueError:
        return 0

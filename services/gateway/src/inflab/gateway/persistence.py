"""Storing a run event in Postgres and applying it to its run.

A batch of events is one transaction: the ``run_events`` inserts (deduplicated on
``event_id``) and their effects on the runs commit together, so a redelivered event —
JetStream is at-least-once — finds its row and changes nothing. The run rows are locked
first, which serialises events of one run across gateway replicas and keeps a run's
``run_events.id`` order equal to its commit order (what SSE resumption relies on). A
run's progress bar is computed from the latest fraction of each stage, kept on the run
row (``runs.stage_progress``), so an event costs the same however long the run is.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from inflab.core.db.models import (
    Checkpoint,
    AnswerRow,
    InfluenceMatrixRow,
    Metric,
    Prediction,
    Run,
    RunEventRow,
)
from inflab.core.messages import (
    CheckpointEvent,
    EventBase,
    MetricEvent,
    PredictionEvent,
    ProgressEvent,
    ResultEvent,
    StatusEvent,
)
from inflab.core.vocabulary import ACTIVE_STATUSES, TERMINAL_STATUSES, RunStatus
from inflab.gateway.run_state import (
    event_stage_key,
    next_stage_status,
    overall_progress,
    run_error,
    run_outcome,
    stages_after_training,
)

log = logging.getLogger(__name__)

#: What a metric row keeps of a MetricEvent besides its run and step.
METRIC_VALUES = {"epoch", "loss", "learning_rate", "grad_norm", "tokens_per_s", "samples_per_s", "memory_mb",
                 "gpu_memory_mb"}


# --------------------------------------------------------------------------- storing
def _event_row(event: EventBase) -> dict:
    return dict(event_id=event.event_id, run_id=event.run_id, kind=event.kind, stage=event.stage,
                method=event.method, payload=event.model_dump(mode="json"))


async def insert_event(session: AsyncSession, event: EventBase) -> int | None:
    """Store an event; its ``run_events.id``, or None if it was stored before."""
    stmt = (
        insert(RunEventRow)
        .values(**_event_row(event))
        .on_conflict_do_nothing(index_elements=[RunEventRow.event_id])
        .returning(RunEventRow.id)
    )
    return await session.scalar(stmt)


async def finish_run(
    session: AsyncSession, run: Run, status: RunStatus, at: datetime, error: str | None = None,
    announce: bool = True,
) -> None:
    """Move a run to a terminal status, once. ``announce`` adds the run-level status event
    that tells SSE clients the run is over (False when the event being applied is that)."""
    if run.status in TERMINAL_STATUSES:
        return
    run.status = status
    run.finished_at = at
    if error and not run.error:
        run.error = error
    if status == "completed":
        run.progress = 1.0
        run.eta_s = 0.0
    else:
        # Stages that never started never will: say so rather than leave them "queued".
        run.stages = {key: "cancelled" if value == "queued" else value for key, value in run.stages.items()}
    _record_actuals(run)
    if announce:
        event = StatusEvent(run_id=run.id, stage="run", status=status, error=run.error)
        await insert_event(session, event)


def _record_actuals(run: Run) -> None:
    """Wall-clock and its price beside the estimate. Priced as the estimate priced it (its
    price per device-hour and device count), so the two compare whatever the price table
    says today. A run that never started cost nothing measurable: both stay None."""
    if run.started_at is None or run.finished_at is None:
        return
    run.actual_duration_s = max((run.finished_at - run.started_at).total_seconds(), 0.0)
    estimate = run.estimate or {}
    price = estimate.get("price_per_hour_usd")
    if price is not None:
        run.actual_cost_usd = run.actual_duration_s / 3600 * price * estimate.get("gpu_count", 1)


async def persist_event(session: AsyncSession, event: EventBase) -> bool:
    """Store and apply one event in one transaction. True when something was written
    (so SSE streams should look); False for a duplicate or an unknown run."""
    return bool(await persist_events(session, [event]))


async def persist_events(session: AsyncSession, events: Sequence[EventBase]) -> list[EventBase]:
    """Store and apply a batch of events in one transaction (one commit for the batch);
    the events that wrote something, in order. Duplicates (stored before, or twice in the
    batch) and events of unknown runs write nothing.

    The batch's runs are locked in id order, so two replicas storing overlapping batches
    wait for each other instead of deadlocking; the events are inserted with one
    statement, then applied to their runs in arrival order."""
    if not events:
        return []
    async with session.begin():
        run_ids = sorted({event.run_id for event in events})
        runs = {
            run.id: run
            for run in await session.scalars(
                select(Run).where(Run.id.in_(run_ids)).order_by(Run.id).with_for_update()
            )
        }
        known: dict[UUID, EventBase] = {}
        for event in events:
            if event.run_id not in runs:
                # Not ours to invent: a run exists once its owner created it. Ack and move on.
                log.warning("%s event for unknown run %s dropped", event.kind, event.run_id)
            else:
                known.setdefault(event.event_id, event)
        if not known:
            return []
        inserted = set(
            await session.scalars(
                insert(RunEventRow)
                .values([_event_row(event) for event in known.values()])
                .on_conflict_do_nothing(index_elements=[RunEventRow.event_id])
                .returning(RunEventRow.event_id)
            )
        )
        stored = []
        for event in known.values():
            if event.event_id not in inserted:
                log.debug("duplicate event %s ignored", event.event_id)
                continue
            await _apply(session, runs[event.run_id], event)
            stored.append(event)
    return stored


async def _apply(session: AsyncSession, run: Run, event: EventBase) -> None:
    if event.stage == "validation":
        # A validation follows an ended run and never changes its status (validations.py).
        from inflab.gateway.validations import apply_event

        await apply_event(session, run, event)
        return
    match event:
        case StatusEvent():
            await _apply_status(session, run, event)
        case ProgressEvent():
            await _apply_progress(session, run, event)
        case MetricEvent():
            await _apply_metric(session, run, event)
        case PredictionEvent():
            await _apply_predictions(session, run, event)
        case CheckpointEvent():
            ckpt = event.checkpoint
            await session.execute(
                insert(Checkpoint)
                .values(run_id=run.id, step=ckpt.step, epoch=ckpt.epoch, key=ckpt.key,
                        loss=ckpt.loss, learning_rate=ckpt.learning_rate)
                .on_conflict_do_nothing(index_elements=[Checkpoint.run_id, Checkpoint.step])
            )
        case ResultEvent():
            await _apply_result(session, run, event)
        # Log and params events are only stored (SSE and the history show them); the
        # training summary is read back from its result event.


async def _apply_metric(session: AsyncSession, run: Run, event: MetricEvent) -> None:
    # A trainer resumed from a checkpoint re-sends the steps after it (as new events): one
    # row per step, the latest report winning, so the curve has no gap and no duplicate.
    values = event.model_dump(include=METRIC_VALUES)
    stmt = insert(Metric).values(run_id=run.id, step=event.step, **values)
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[Metric.run_id, Metric.step], set_={c: stmt.excluded[c] for c in METRIC_VALUES}
        )
    )
    run.loss = event.loss
    run.current_epoch = event.epoch


async def _apply_predictions(session: AsyncSession, run: Run, event: PredictionEvent) -> None:
    # One row per (step, prompt), so a re-sent sampling point (a resumed run) replaces
    # its rows; a repeated prompt within one event keeps its last answer.
    samples = {sample.prompt_id: sample for sample in event.samples}.values()
    if not samples:
        return
    stmt = insert(Prediction).values(
        [
            dict(run_id=run.id, step=event.step, epoch=event.epoch, prompt_id=s.prompt_id, prompt=s.prompt,
                 ground_truth=s.ground_truth, prediction=s.prediction, precision=event.precision)
            for s in samples
        ]
    )
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[Prediction.run_id, Prediction.step, Prediction.prompt_id],
            set_={c: stmt.excluded[c] for c in ("epoch", "prompt", "ground_truth", "prediction", "precision")},
        )
    )


async def _apply_status(session: AsyncSession, run: Run, event: StatusEvent) -> None:
    if event.stage == "run":
        # A run-level status from a producer (e.g. a cancel) is itself the announcement.
        if event.status in TERMINAL_STATUSES:
            await finish_run(session, run, event.status, event.time, event.error, announce=False)
        return
    key = event_stage_key(event)
    if key not in run.stages:
        log.warning("run %s has no stage %r; status %s ignored", run.id, key, event.status)
        return
    stages = dict(run.stages)  # a new dict: JSONB columns do not track in-place changes
    before = stages[key]
    stages[key] = next_stage_status(before, event.status)
    if key == "train":
        stages = stages_after_training(stages)
    run.stages = stages
    if event.error and stages[key] == event.status and before not in TERMINAL_STATUSES:
        run.stage_errors = {**(run.stage_errors or {}), key: event.error}
    # "checkpointing" is training too: the run is running, whichever status came first.
    if stages[key] in ACTIVE_STATUSES and run.status == "queued":
        run.status = "running"
        run.started_at = run.started_at or event.time
    if (key == "train" and stages[key] in TERMINAL_STATUSES and run.started_at
            and run.actual_training_duration_s is None):
        run.actual_training_duration_s = max((event.time - run.started_at).total_seconds(), 0.0)
    _update_progress(run)
    outcome = run_outcome(stages)
    if outcome is not None:
        # Every stage has ended: the run's final status, with the failed stages' reasons.
        await finish_run(session, run, outcome, event.time, run_error(stages, run.stage_errors or {}, outcome))


async def _apply_progress(session: AsyncSession, run: Run, event: ProgressEvent) -> None:
    if event.stage == "train" and event.epoch is not None:
        run.current_epoch = event.epoch
    if event.eta_s is not None:
        run.eta_s = event.eta_s
    run.stage_progress = latest_fractions(run.stage_progress or {}, event)
    _update_progress(run)


def latest_fractions(kept: dict, event: ProgressEvent) -> dict:
    """``runs.stage_progress`` with ``event`` applied: a stage's fraction is its latest by
    the producer's clock (a tie goes to the event stored later), so a progress event
    redelivered late does not pull the bar back. A new dict (JSONB does not track
    in-place changes)."""
    key = event_stage_key(event)
    current = kept.get(key)
    if current is not None and datetime.fromisoformat(current["time"]) > event.time:
        return kept
    return {**kept, key: {"fraction": event.fraction, "time": event.time.isoformat()}}


def _update_progress(run: Run) -> None:
    if run.status in TERMINAL_STATUSES:
        return
    fractions = {key: kept.get("fraction") or 0.0 for key, kept in (run.stage_progress or {}).items()}
    run.progress = overall_progress(run.stages, fractions)


async def _apply_result(session: AsyncSession, run: Run, event: ResultEvent) -> None:
    # A stage that is redone (its job redelivered) publishes a fresh result: the latest wins.
    if event.answers:
        # One row per question even if a producer repeats one (Postgres refuses to upsert
        # the same row twice in one statement).
        answers = {a.eval_id: a for a in event.answers}.values()
        stmt = insert(AnswerRow).values(
            [
                dict(run_id=run.id, eval_id=a.eval_id, question=a.question, reference=a.reference,
                     base=a.base, few_shot=a.few_shot, fine_tuned=a.fine_tuned,
                     scores=None if a.scores is None else a.scores.model_dump(mode="json"))
                for a in answers
            ]
        )
        await session.execute(
            stmt.on_conflict_do_update(
                index_elements=[AnswerRow.run_id, AnswerRow.eval_id],
                set_={c: stmt.excluded[c]
                      for c in ("question", "reference", "base", "few_shot", "fine_tuned", "scores")},
            )
        )
    if event.influence is not None:
        # The summary, and the matrix only if the event carried it inline (small ones);
        # otherwise scores is [] (no matrix is empty) and the results API reads it from
        # the object store.
        m = event.influence
        stmt = insert(InfluenceMatrixRow).values(
            run_id=run.id, method=m.method, variant=m.variant, eval_ids=m.eval_ids,
            train_ids=m.train_ids, scores=[] if m.scores is None else m.scores, key=m.key, args=m.args,
            top_k=None if m.top_k is None else [t.model_dump(mode="json") for t in m.top_k],
        )
        await session.execute(
            stmt.on_conflict_do_update(
                index_elements=[InfluenceMatrixRow.run_id, InfluenceMatrixRow.method, InfluenceMatrixRow.variant],
                set_={c: stmt.excluded[c] for c in ("eval_ids", "train_ids", "scores", "key", "args", "top_k")},
            )
        )


# --------------------------------------------------------------------------- consuming

"""Validations of a run's attributions against retraining: what the gateway does around the
trainer's retrainings.

Starting one (:func:`prepare`): the run must have completed with influence results; the
matrices to check are every influence matrix the run computed (method and variant) and
BM25's (the word-overlap baseline); the retrainings are planned here
(:func:`inflab.analysis.validation.plan_retrainings`, seeds recorded), their cost estimated
from the run's own estimate, and the validation row stored with its plan. The request to
the trainer carries only the retrainings and the answers to measure.

Finishing one (:func:`finish`): when the trainer's result (every retraining's measured
losses) is stored, the LDS and removal test of every matrix are computed from the plan,
the summary goes into the row and the detail (plan, losses, per-question figures, where
and how long each retraining ran) into the object store at
``runs/{run_id}/validations/{validation_id}.json``.

Validation events are the run's events (stage ``validation``): they are stored and
streamed like the others, but they never change the run's own status or progress.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import numpy as np
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inflab.analysis import validation as maths
from inflab.core.db.models import AnswerRow, InfluenceMatrixRow, Run, Validation
from inflab.core.messages import (
    EventBase,
    ProgressEvent,
    ResultEvent,
    RunSpec,
    StatusEvent,
    TaskResourceRequest,
    ValidationLosses,
    ValidationSettings,
    ValidationTarget,
)
from inflab.core.objectstore import ObjectStore
from inflab.core.store_layout import validation_key
from inflab.core.settings import Settings
from inflab.core.vocabulary import ACTIVE_STATUSES, TERMINAL_STATUSES, Variant
from inflab.gateway.baselines import run_baselines
from inflab.gateway.influence import read_scores

log = logging.getLogger(__name__)



class ValidationRefused(Exception):
    """The run cannot be validated (yet): the message says why."""

    def __init__(self, message: str, status_code: int = 409) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code




def matrix_name(method: str, variant: Variant) -> str:
    return f"{method}/{variant}"


@dataclass
class Prepared:
    plan: maths.Plan
    targets: list[ValidationTarget]
    estimate: dict
    matrix_names: list[str]


async def run_matrices(session: AsyncSession, store: ObjectStore, run: Run) -> dict[str, np.ndarray]:
    """Every influence matrix of the run (rows and columns in the run's own order) and
    BM25's, by name (``tracin/raw``, ``bm25/question``...)."""
    spec = RunSpec.model_validate(run.config)
    eval_ids, train_ids = [q.id for q in spec.eval_data], [p.id for p in spec.training_data]
    rows = (await session.scalars(
        select(InfluenceMatrixRow).where(InfluenceMatrixRow.run_id == run.id)
        .order_by(InfluenceMatrixRow.method, InfluenceMatrixRow.variant)
    )).all()
    matrices: dict[str, np.ndarray] = {}
    for row in rows:
        scores = np.asarray(await read_scores(store, row), dtype=np.float64)
        # A method's ids may come in another order than the run's: align them.
        rows_at = [row.eval_ids.index(e) for e in eval_ids]
        cols_at = [row.train_ids.index(t) for t in train_ids]
        matrices[matrix_name(row.method, row.variant)] = scores[np.ix_(rows_at, cols_at)]
    for baseline in await asyncio.to_thread(run_baselines, spec):
        matrices[matrix_name(baseline["method"], baseline["variant"])] = np.asarray(baseline["scores"])
    return matrices


def answer_targets(spec: RunSpec, answer_rows: list[AnswerRow]) -> list[ValidationTarget]:
    """Each evaluation question's answer to measure: its reference, or where it has none
    the fine-tuned model's answer."""
    fine_tuned = {g.eval_id: g.fine_tuned for g in answer_rows}
    targets = []
    for question in spec.eval_data:
        if question.answer and question.answer.strip():
            targets.append(ValidationTarget(eval_id=question.id, answer=question.answer, source="reference"))
        elif fine_tuned.get(question.id, "").strip():
            targets.append(ValidationTarget(eval_id=question.id, answer=fine_tuned[question.id], source="fine_tuned"))
        else:
            raise ValidationRefused(
                f"evaluation question {question.id!r} has no reference answer and no fine-tuned answer to measure"
            )
    return targets


def estimate_cost(spec: RunSpec, plan: maths.Plan, run_estimate: dict | None, workers: int) -> dict:
    """Planning figures: the run's estimated training time scaled by the share of pairs
    each retraining keeps, summed, and spread over ``workers`` parallel retrainings."""
    n = len(spec.training_data)
    per_run = (run_estimate or {}).get("estimated_duration_s")
    price = (run_estimate or {}).get("price_per_hour_usd")
    gpu_count = (run_estimate or {}).get("gpu_count", 1)
    kept = sum(len(r.keep) for r in plan.retrainings)
    serial = None if per_run is None else per_run * kept / n
    wall = None if serial is None else serial / max(workers, 1)
    return {
        "retrainings": len(plan.retrainings),
        "subsets": len(plan.subsets),
        "removals": sum(1 for r in plan.retrainings if r.kind == "removal"),
        "training_pairs_trained": kept,
        "workers": workers,
        "estimated_compute_s": None if serial is None else round(serial, 1),
        "estimated_duration_s": None if wall is None else round(wall, 1),
        "estimated_cost_usd": None if serial is None or price is None else serial / 3600 * price * gpu_count,
        "assumptions": [
            "each retraining costs the run's estimated training time in proportion to the pairs it keeps",
            f"{workers} retrainings at once (INFLAB_VALIDATION_WORKERS: the Ray cluster's parallel slots)",
            "measuring the losses and loading the model add to it",
        ],
    }


def task_resources(run_estimate: dict | None, settings: Settings) -> TaskResourceRequest:
    """A retraining asks for a GPU where the run's model tier trains on one."""
    gpu = (run_estimate or {}).get("gpu", "cpu")
    return TaskResourceRequest(
        num_cpus=settings.validation_task_num_cpus,
        num_gpus=0.0 if gpu == "cpu" else float((run_estimate or {}).get("gpu_count", 1)),
    )


async def prepare(session: AsyncSession, store: ObjectStore, run: Run, wanted: ValidationSettings,
                  settings: Settings) -> Prepared:
    """Check the run can be validated and plan the retrainings; raises ValidationRefused."""
    if run.status != "completed":
        raise ValidationRefused(f"the run has not completed (it is {run.status}): there are no results to validate")
    spec = RunSpec.model_validate(run.config)
    has_influence = await session.scalar(select(InfluenceMatrixRow.id).where(InfluenceMatrixRow.run_id == run.id).limit(1))
    if has_influence is None:
        raise ValidationRefused("the run has no influence results to validate")
    if len(spec.training_data) < 2:
        raise ValidationRefused("a validation needs at least 2 training pairs", 422)
    answer_rows = (await session.scalars(select(AnswerRow).where(AnswerRow.run_id == run.id))).all()
    targets = answer_targets(spec, list(answer_rows))
    matrices = await run_matrices(session, store, run)
    try:
        plan = await asyncio.to_thread(
            maths.plan_retrainings, len(spec.training_data), len(spec.eval_data), matrices,
            subsets=wanted.subsets, alpha=wanted.alpha, removal_k=wanted.removal_k, seed=wanted.seed,
        )
    except ValueError as exc:
        raise ValidationRefused(str(exc), 422) from None
    estimate = estimate_cost(spec, plan, run.estimate, settings.validation_workers)
    return Prepared(plan=plan, targets=targets, estimate=estimate, matrix_names=list(matrices))


def plan_to_json(plan: maths.Plan) -> dict:
    return {
        "n_train": plan.n_train,
        "subsets": [{"seed": s.seed, "keep": list(s.keep)} for s in plan.subsets],
        "retrainings": [{"key": r.key, "kind": r.kind, "keep": list(r.keep), "seed": r.seed, "removed": list(r.removed)}
                        for r in plan.retrainings],
        "removals": plan.removals,
        "random_removals": plan.random_removals,
        "removed": {name: [list(t) for t in tops] for name, tops in plan.removed.items()},
    }


def plan_from_json(data: dict) -> maths.Plan:
    return maths.Plan(
        n_train=data["n_train"],
        subsets=[maths.Subset(seed=s["seed"], keep=tuple(s["keep"])) for s in data["subsets"]],
        retrainings=[maths.Retraining(key=r["key"], kind=r["kind"], keep=tuple(r["keep"]), seed=r["seed"],
                                      removed=tuple(r["removed"])) for r in data["retrainings"]],
        removals=data["removals"],
        random_removals=data["random_removals"],
        removed={name: [tuple(t) for t in tops] for name, tops in data["removed"].items()},
    )


# --------------------------------------------------------------------------- events
async def latest_validation(session: AsyncSession, run_id: object, validation_id: object | None = None) -> Validation | None:
    query = select(Validation).where(Validation.run_id == run_id)
    if validation_id is not None:
        query = query.where(Validation.id == validation_id)
    return await session.scalar(query.order_by(Validation.created_at.desc()).limit(1).with_for_update())


async def apply_event(session: AsyncSession, run: Run, event: EventBase) -> None:
    """A validation event's effect on its validation (the run's latest; a result names its
    own). Status and progress only: the result's analysis is :func:`finish`'s."""
    validation_id = event.validation.validation_id if isinstance(event, ResultEvent) and event.validation else None
    row = await latest_validation(session, run.id, validation_id)
    if row is None:
        log.warning("validation %s event for run %s without a validation", event.kind, run.id)
        return
    if isinstance(event, StatusEvent):
        if row.status in TERMINAL_STATUSES:
            return  # a cancelled validation stays cancelled; a finished one finished
        if event.status in ACTIVE_STATUSES:
            row.status = "running"
            row.started_at = row.started_at or event.time
        elif event.status == "completed":
            # Completed once its summary is in (finish); a failed analysis fails it.
            if row.summary is not None:
                row.status, row.progress, row.finished_at = "completed", 1.0, event.time
        elif event.status in TERMINAL_STATUSES:
            row.status, row.finished_at = event.status, event.time
            row.error = event.error or row.error
    elif isinstance(event, ProgressEvent):
        if row.status not in TERMINAL_STATUSES:
            row.progress = max(row.progress or 0.0, min(event.fraction, 1.0))


def analyse(plan: maths.Plan, matrices: dict[str, np.ndarray], losses: ValidationLosses) -> tuple[dict, dict]:
    """The summary (per matrix: LDS mean and interval, removal test) and the detail."""
    by_key = {r.key: [math.nan if v is None else v for v in r.losses] for r in losses.retrainings}
    missing = [r.key for r in plan.retrainings if r.key not in by_key]
    if missing:
        raise ValueError(f"the result lacks {len(missing)} retrainings (e.g. {missing[0]})")
    results = maths.analyse(plan, matrices, by_key)
    summary = {}
    for name, result in results.items():
        lds, removal = result["lds"], result["removal"]
        method, variant = name.split("/", 1)
        summary[name] = {
            "method": method, "variant": variant,
            "lds": lds.mean, "lds_low": lds.low, "lds_high": lds.high,
            "removal_over_random": removal.mean_over_random,
            "removal_increase_top": removal.mean_increase_top,
            "removal_increase_random": removal.mean_increase_random,
            "removal_win_rate": removal.win_rate,
        }
    detail = {
        "eval_ids": losses.eval_ids,
        "plan": plan_to_json(plan),
        "retrainings": [r.model_dump(mode="json") for r in losses.retrainings],
        "wall_seconds": losses.wall_seconds,
        "per_question": {name: {"lds": asdict(r["lds"])["per_question"],
                                "removal_over_random": asdict(r["removal"])["per_question"]}
                         for name, r in results.items()},
    }
    return summary, detail


async def finish(sessionmaker: async_sessionmaker[AsyncSession], store: ObjectStore, event: ResultEvent) -> bool:
    """Analyse a stored validation result; True when the row changed."""
    losses = event.validation
    async with sessionmaker() as session:
        row = await session.get(Validation, losses.validation_id)
        run = await session.get(Run, event.run_id)
        if row is None or run is None or row.run_id != run.id or row.status == "cancelled":
            return False
        try:
            matrices = await run_matrices(session, store, run)
            plan = plan_from_json(row.plan)
            summary, detail = await asyncio.to_thread(analyse, plan, matrices, losses)
            key = validation_key(run.id, row.id)
            await store.put_async(key, json.dumps(detail, default=_plain).encode())
        except Exception as exc:
            log.exception("analysing validation %s of run %s", row.id, run.id)
            row.status, row.error = "failed", f"analysing the retrainings: {type(exc).__name__}: {exc}"[:2000]
            row.finished_at = datetime.now(timezone.utc)
            await session.commit()
            return True
        row.summary, row.detail_key = summary, key
        row.status, row.progress = "completed", 1.0
        row.finished_at = row.finished_at or datetime.now(timezone.utc)
        await session.commit()
    return True


def _plain(value: object) -> object:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON")

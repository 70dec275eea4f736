"""The experiments library's query: each experiment's summary with its run count and most
recent run, searched and sorted, in one statement (a lateral join picks each experiment's
latest run and counts its runs with a window, so a page of 100 is one round trip, not 101).
"""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

from sqlalchemy import Select, case, func, or_, select, true

from inflab.core.db.models import Experiment, Run
from inflab.core.vocabulary import RunStatus
from inflab.gateway.schemas import ExperimentSummary, LastRun

ExperimentSort = Literal["updated", "name", "last_run_status", "created"]

#: Ascending order of the last run's status: what needs attention first, experiments that
#: never ran last.
STATUS_RANK: dict[RunStatus, int] = {"running": 0, "checkpointing": 0, "queued": 1, "failed": 2, "cancelled": 3, "completed": 4}
NO_RUN_RANK = 5
DEFAULT_ORDER: dict[str, str] = {"updated": "desc", "created": "desc", "name": "asc", "last_run_status": "asc"}


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def experiment_list_query(owner_id: UUID, q: str | None, sort: ExperimentSort, order: str | None) -> Select:
    """Summaries of ``owner_id``'s experiments matching ``q``, ordered by ``sort``
    (``order``: ``asc``/``desc``, or None for the sort's natural direction)."""
    last_run = (
        select(
            Run.id, Run.status, Run.progress, Run.loss, Run.created_at, Run.finished_at,
            # Over every run of the experiment, evaluated before the LIMIT.
            func.count().over().label("run_count"),
        )
        .where(Run.experiment_id == Experiment.id, Run.owner_id == owner_id)
        .order_by(Run.created_at.desc(), Run.id.desc())
        .limit(1)
        .lateral("last_run")
    )
    stmt = (
        select(
            Experiment.id,
            Experiment.name,
            Experiment.description,
            Experiment.model_id,
            func.jsonb_array_length(Experiment.training_data).label("training_pairs"),
            func.jsonb_array_length(Experiment.eval_data).label("eval_questions"),
            Experiment.created_at,
            Experiment.updated_at,
            func.coalesce(last_run.c.run_count, 0).label("run_count"),
            last_run.c.id.label("last_run_id"),
            last_run.c.status.label("last_run_status"),
            last_run.c.progress.label("last_run_progress"),
            last_run.c.loss.label("last_run_loss"),
            last_run.c.created_at.label("last_run_created_at"),
            last_run.c.finished_at.label("last_run_finished_at"),
        )
        .select_from(Experiment)
        .outerjoin(last_run, true())
        .where(Experiment.owner_id == owner_id)
    )
    if q and q.strip():
        pattern = _like_pattern(q.strip())
        stmt = stmt.where(or_(Experiment.name.ilike(pattern, escape="\\"),
                              Experiment.description.ilike(pattern, escape="\\")))
    key: Any = {
        "updated": Experiment.updated_at,
        "created": Experiment.created_at,
        "name": func.lower(Experiment.name),
        "last_run_status": case(STATUS_RANK, value=last_run.c.status, else_=NO_RUN_RANK),
    }[sort]
    descending = (order or DEFAULT_ORDER[sort]) == "desc"
    return stmt.order_by(key.desc() if descending else key.asc(), Experiment.updated_at.desc(), Experiment.id)


def summary_out(row: Any) -> ExperimentSummary:
    last = None
    if row.last_run_id is not None:
        last = LastRun(id=row.last_run_id, status=row.last_run_status, progress=row.last_run_progress,
                       loss=row.last_run_loss, created_at=row.last_run_created_at,
                       finished_at=row.last_run_finished_at)
    return ExperimentSummary(
        id=row.id, name=row.name, description=row.description, model_id=row.model_id,
        training_pairs=row.training_pairs, eval_questions=row.eval_questions, created_at=row.created_at,
        updated_at=row.updated_at, run_count=row.run_count, last_run=last,
    )

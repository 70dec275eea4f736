"""``GET /api/benchmarks/{run_id}``: the leaderboard of a benchmark run.

Computed on request from what is stored: every influence matrix of the run (Postgres, or
the object store for large ones), the run's ground truth (its config snapshot) and the
text baselines (random, BM25, edit distance) from the same config; the embedding baseline
is one of the run's influence methods and also says which queries the fine-tuned model
answers correctly. Nothing here changes once the run has completed, so the numbers are
the same on every request.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from inflab.analysis.bench.baselines import edit_distance_scores, random_scores
from inflab.analysis.bench.leaderboard import Entry, leaderboard
from inflab.core.db.models import InfluenceMatrixRow
from inflab.core.messages import RunSpec
from inflab.core.vocabulary import RunStatus
from inflab.gateway.baselines import bm25_scores
from inflab.gateway.deps import OwnedRun, SessionDep
from inflab.gateway.influence import MatrixUnavailable, ObjectStoreDep, read_scores

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/benchmarks", tags=["benchmarks"])


class MetricSummary(BaseModel):
    mean: float | None
    std: float | None
    n: int
    """Queries the metric was defined for."""


class QueryScores(BaseModel):
    query_id: str
    metrics: dict[str, float | None]
    top_documents: list[str]
    """The ten highest-scoring documents, best first."""


class LeaderboardRow(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    rank: int
    method: str
    variant: str
    kind: str
    """``method`` (an attribution method of the run) or ``baseline``."""
    label: str
    all: dict[str, MetricSummary]
    """Mean and standard deviation over all queries: recall@1/5/10, precision@1/5/10, mrr, map, roc_auc."""
    correct: dict[str, MetricSummary] | None
    """The same over the queries the fine-tuned model answers correctly (null: none, or unknown)."""
    per_query: list[QueryScores]


class BenchmarkQuery(BaseModel):
    id: str
    question: str
    answer: str
    relevant_ids: list[str]
    correct: bool | None
    """The fine-tuned model's answer logit is the top one at every answer token (null: unknown)."""


class BenchmarkDocument(BaseModel):
    id: str
    label: str
    text: str


class Leaderboard(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    run_id: str
    status: RunStatus
    ranked_by: str
    accuracy: float | None
    """Share of queries the fine-tuned model answers correctly (null until the embedding baseline ran)."""
    correct_queries: int | None
    pending_methods: list[str]
    """Methods the run asked for whose scores are not stored yet."""
    rows: list[LeaderboardRow]
    queries: list[BenchmarkQuery]
    documents: list[BenchmarkDocument]


def _baselines(spec: RunSpec) -> list[Entry]:
    documents = [p.answer for p in spec.training_data]
    queries = [q.question for q in spec.eval_data]
    n, m = len(queries), len(documents)
    return [
        Entry("random", "raw", "baseline", random_scores(n, m, seed=0), "Random"),
        Entry("bm25", "question", "baseline", bm25_scores(documents, queries), "BM25"),
        Entry("edit_distance", "raw", "baseline", edit_distance_scores(documents, queries), "Edit distance"),
    ]


def build(spec: RunSpec, run_id: str, run_status: RunStatus, stored: list[tuple[InfluenceMatrixRow, list]]) -> dict[str, Any]:
    assert spec.benchmark is not None
    query_ids = [q.id for q in spec.eval_data]
    document_ids = [p.id for p in spec.training_data]
    entries, correct = [], None
    for row, scores in stored:
        matrix = np.asarray(scores, dtype=np.float64)
        if list(row.eval_ids) != query_ids or list(row.train_ids) != document_ids:
            # Same ids, maybe in another order: reindex.
            qi = {q: i for i, q in enumerate(row.eval_ids)}
            di = {d: j for j, d in enumerate(row.train_ids)}
            matrix = matrix[[qi[q] for q in query_ids]][:, [di[d] for d in document_ids]]
        kind = "baseline" if row.method == "embedding" else "method"
        label = "Embedding cosine" if row.method == "embedding" else row.method
        entries.append(Entry(row.method, row.variant, kind, matrix, label if row.variant == "raw" else f"{label} ({row.variant})"))
        if row.method == "embedding" and isinstance(row.args.get("answered_correctly"), dict):
            correct = row.args["answered_correctly"]
    entries.extend(_baselines(spec))
    board = leaderboard(entries, query_ids, document_ids, spec.benchmark.relevant, correct)
    done = {row.method for row, _ in stored}
    return {
        "run_id": run_id,
        "status": run_status,
        **board,
        "pending_methods": [m for m in spec.influence_methods if m not in done],
        "queries": [
            {"id": q.id, "question": q.question, "answer": q.answer or "", "relevant_ids": spec.benchmark.relevant[q.id],
             "correct": None if correct is None else bool(correct.get(q.id, False))}
            for q in spec.eval_data
        ],
        "documents": [{"id": p.id, "label": p.question, "text": p.answer} for p in spec.training_data],
    }


class GenerateRequest(BaseModel):
    """What ``inflab bench generate`` takes (the same seed gives the same set)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    seed: int = Field(0, ge=0, le=2**31 - 1)
    docs_per_base: int = Field(10, ge=1, le=200)
    """Documents per base function (the public set: 200)."""
    docs_per_wrapper: int = Field(5, ge=1, le=100)
    """Documents per wrapper function (the public set: 100)."""
    distractors: int = Field(30, ge=0, le=1000)
    queries_per_function: int = Field(1, ge=1, le=3)


class GeneratedSet(BaseModel):
    documents: list[dict[str, Any]]
    """In the function-hops layout: uid, text, func, role, constant, hop_depth, type, parent_uid."""
    queries: list[dict[str, Any]]
    """id, question, answer, func and relevant_ids (the ground truth)."""
    special_tokens: list[str]
    manifest: dict[str, Any]
    experiment: dict[str, Any]
    """A ``POST /api/experiments`` body for the set (a benchmark experiment on the default model)."""


@router.post("/generate")
async def generate_set(body: GenerateRequest) -> GeneratedSet:
    """A function-token benchmark set, exactly as ``inflab bench generate`` writes it, and
    the experiment body that runs it. Deterministic; no model, no network."""
    import dataclasses

    from inflab.analysis.bench.client import experiment_body
    from inflab.analysis.bench.generate import GeneratorOptions, generate

    bench = generate(GeneratorOptions(**body.model_dump()))
    return GeneratedSet(
        documents=[dataclasses.asdict(d) for d in bench.documents],
        queries=[{"id": q.id, "question": q.question, "answer": q.answer, "func": q.func,
                  "relevant_ids": list(q.relevant_ids)} for q in bench.queries],
        special_tokens=bench.special_tokens,
        manifest=bench.manifest,
        experiment=experiment_body(bench, name=f"function-token benchmark, seed {body.seed}"),
    )


@router.get(
    "/{run_id}",
    responses={404: {"description": "No such run, or not yours."},
               409: {"description": "The run is not a benchmark run."},
               502: {"description": "An influence matrix could not be read from the object store."}},
)
async def get_leaderboard(run: OwnedRun, session: SessionDep, store: ObjectStoreDep) -> Leaderboard:
    """The leaderboard of a benchmark run: every method and baseline ranked by recall@5,
    with recall@1/5/10, precision@k, MRR, mAP and ROC-AUC (mean and standard deviation)
    over the correctly answered queries and over all, and the per-query drill-down."""
    spec = RunSpec.model_validate(run.config)
    if spec.benchmark is None:
        raise HTTPException(status.HTTP_409_CONFLICT, "run is not a benchmark run (its experiment has no benchmark)")
    rows = list(await session.scalars(
        select(InfluenceMatrixRow).where(InfluenceMatrixRow.run_id == run.id)
        .order_by(InfluenceMatrixRow.method, InfluenceMatrixRow.variant)
    ))
    try:
        stored = [(row, await read_scores(store, row)) for row in rows]
    except MatrixUnavailable as exc:
        log.error("leaderboard of run %s: %s", run.id, exc)
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, str(exc)) from exc
    # Metrics over a few hundred queries x thousands of documents: off the event loop.
    board = await asyncio.to_thread(build, spec, str(run.id), run.status, stored)
    return Leaderboard.model_validate(board)

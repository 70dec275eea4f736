"""A benchmark set as the gateway's experiment body, and the leaderboard as a table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from inflab.analysis.bench.dataset import BenchmarkSet

#: What ``inflab bench run`` scores by default: the representation methods (patching is
#: slow and asked for by name), the gradient methods and the embedding baseline (which also
#: tells which queries the fine-tuned model answers).
DEFAULT_METHODS = ("delta_h", "act_grad", "attr_change", "tracin", "datainf", "embedding")
#: The training a benchmark run gets for what its caller does not set (``inflab bench run``'s
#: defaults, and the experiment ``POST /api/benchmarks/generate`` returns). Chosen so that the
#: default model (SmolLM2-135M) learns the generated set's base functions within a CPU budget
#: (README, "Leaderboard on the generated set"): the queries ask in a wording no document
#: uses, so the value has to be stored with the function token. LoRA r8 on q/v for 4 epochs
#: at 3e-3 answered no query (at 1e-2 its loss rose); on every linear layer it answered 6 of
#: the 10 base functions after 4 epochs and all 10 after 6. A checkpoint every other epoch
#: keeps TracIn's cost (a gradient pass per checkpoint) at three passes.
BENCHMARK_HYPERPARAMS: dict[str, Any] = {
    "num_epochs": 6,
    "learning_rate": 3e-3,
    "max_seq_length": 48,
    "batch_size": 8,
    "lora_rank": 8,
    "lora_alpha": 16.0,
    "lora_target_modules": ["all-linear"],
    "checkpoint_interval": 2,
}
#: Columns of the printed leaderboard.
COLUMNS = ("recall@1", "recall@5", "recall@10", "precision@5", "mrr", "map", "roc_auc")


def experiment_body(bench: BenchmarkSet, *, name: str, model_id: str | None = None,
                    methods: Sequence[str] = DEFAULT_METHODS, hyperparams: dict[str, Any] | None = None,
                    influence_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """``POST /api/experiments``'s body for ``bench``: documents as training pairs (text in
    ``answer``, the document's type as its label), queries as evaluation questions;
    ``hyperparams`` override :data:`BENCHMARK_HYPERPARAMS` one by one."""
    body: dict[str, Any] = {
        "name": name,
        "description": f"benchmark set {bench.manifest.get('generator') or bench.manifest.get('imported', '')} "
                       f"seed {bench.manifest.get('seed', '-')}: {len(bench.documents)} documents, "
                       f"{len(bench.queries)} queries",
        "training_data": [{"id": d.uid, "question": f"document ({d.type or 'text'})", "answer": d.text}
                          for d in bench.documents],
        "eval_data": [{"id": q.id, "question": q.question, "answer": q.answer} for q in bench.queries],
        "influence_methods": list(methods),
        "benchmark": {"relevant": bench.ground_truth, "special_tokens": list(bench.special_tokens)},
        "few_shot_k": 0,
        "max_new_tokens": 8,
        # The benchmark is about attribution: no answers sampled while training.
        "predictions": {"enabled": False},
    }
    if model_id:
        body["model_id"] = model_id
    body["hyperparams"] = {**BENCHMARK_HYPERPARAMS, **(hyperparams or {})}
    if influence_args:
        body["influence_args"] = influence_args
    return body


def _cell(summary: dict[str, Any] | None) -> str:
    if not summary or summary.get("mean") is None:
        return "-"
    return f"{summary['mean']:.3f}±{summary['std']:.2f}"


def leaderboard_rows(board: dict[str, Any], over: str = "auto") -> tuple[list[str], list[list[str]]]:
    """The table's header and rows: ``over`` is ``correct``, ``all`` or ``auto`` (correct
    when known)."""
    if over == "auto":
        over = "correct" if board.get("correct_queries") else "all"
    header = ["#", "method", "kind", *COLUMNS]
    rows = []
    for row in board["rows"]:
        part = row.get(over) or {}
        rows.append([str(row["rank"]), row["label"], row["kind"], *(_cell(part.get(c)) for c in COLUMNS)])
    return header, rows


def markdown_table(board: dict[str, Any], over: str = "auto") -> str:
    header, rows = leaderboard_rows(board, over)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)

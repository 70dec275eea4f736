"""A validation's retrainings fanned out over Ray.

Each retraining (:func:`inflab.trainer.retrain.retrain`) is its own Ray task, with the
resources the run's model tier needs (``num_cpus``, and ``num_gpus`` where the tier runs on
a GPU), so the cluster runs as many at once as its workers hold. The base model's weights
are put in Ray's object store once and every task reads them from there (on a node, every
task maps the same copy). A task whose worker dies (a node lost, a process killed) is run
again by Ray (``max_retries``). Every task reports where (node, process) and how long it
ran.

:func:`validation_job` is the job as the trainer service runs it (through
:func:`inflab.core.compute.run_streaming`, so its progress streams back as it happens);
:func:`run_retrainings` is the fan-out itself, for a caller that already joined Ray (the
benchmark, tests).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from inflab.core.messages import ProgressEvent, RetrainingRecord, RunSpec, ValidationLosses, ValidationRequest
from inflab.trainer.core_events import CoreEvents, Emit
from inflab.trainer.retrain import Retrained


@dataclass(frozen=True)
class TaskResources:
    """What one retraining asks Ray for. On a CPU-only machine ``num_cpus`` also sets the
    task's torch threads, so that tasks side by side do not oversubscribe the cores."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    #: Times Ray runs a task again after its worker died.
    max_retries: int = 3


@dataclass(frozen=True)
class RetrainingResult(Retrained):
    """What one retraining's Ray task returns: what the retraining measured, and which it
    was, where and how long it ran."""

    key: str
    node_id: str
    node_ip: str
    pid: int
    #: Wall-clock start (seconds since the epoch) and duration of the whole task.
    started_at: float
    seconds: float


def _retrain_task(spec_json: dict, key: str, keep: list[int], model_id: str, models_dir: str,
                  targets: list[tuple[str, str]], shared: Any, threads: int) -> RetrainingResult:
    """The body of one Ray task: one retraining, and where and how long it ran."""
    import ray
    import torch

    from inflab.ml.models import resolve_model
    from inflab.trainer.retrain import retrain

    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    started = time.time()
    model_path = resolve_model(model_id, Path(models_dir))  # per node: its own model cache
    result = retrain(RunSpec.model_validate(spec_json), keep, model_path, targets, shared)
    context = ray.get_runtime_context()
    return RetrainingResult(
        **asdict(result),
        key=key,
        node_id=context.get_node_id(),
        node_ip=ray.util.get_node_ip_address(),
        pid=os.getpid(),
        started_at=started,
        seconds=round(time.time() - started, 3),
    )


def run_retrainings(
    spec: RunSpec,
    retrainings: Sequence[tuple[str, Sequence[int]]],
    targets: Sequence[tuple[str, str]],
    models_dir: str,
    emit: Emit,
    resources: TaskResources = TaskResources(),
    *,
    run_id: UUID | None = None,
) -> dict[str, RetrainingResult]:
    """Run every ``(key, kept training indices)`` retraining as a Ray task and return each
    one's result by key, emitting a progress event (of ``run_id``'s validation stage) as
    each ends. Ray must be initialised."""
    import ray

    from inflab.ml.models import resolve_model
    from inflab.trainer.retrain import SharedWeights

    shared_ref = None
    if spec.hyperparams.quantization == "none":
        model_path = resolve_model(spec.model_id, Path(models_dir))
        shared_ref = ray.put(SharedWeights.from_folder(model_path))
    threads = max(1, int(resources.num_cpus))
    task = ray.remote(_retrain_task).options(
        num_cpus=resources.num_cpus, num_gpus=resources.num_gpus, max_retries=resources.max_retries,
        name="validation-retraining",
    )
    spec_json = spec.model_dump(mode="json")
    pending = {
        task.remote(spec_json, key, list(keep), spec.model_id, models_dir, list(targets), shared_ref, threads): key
        for key, keep in retrainings
    }
    total = len(pending)
    events = CoreEvents("validation", run_id, emit)
    events.send(ProgressEvent, fraction=0.0, step=0, total=total, message=f"{total} retrainings queued on Ray")
    records: dict[str, RetrainingResult] = {}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                key = pending.pop(ref)
                records[key] = ray.get(ref)
                record = records[key]
                events.send(ProgressEvent, fraction=len(records) / total, step=len(records), total=total,
                            message=f"retraining {key} done in {record.seconds:.1f} s on {record.node_ip}")
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    return records


def validation_job(request: dict, models_dir: str, *, emit: Emit) -> ValidationLosses:
    """The job of a ``ValidationRequest`` (as JSON): every retraining it lists, fanned out
    over Ray from inside this (coordinating) task."""
    req = ValidationRequest.model_validate(request)
    spec = req.spec
    n = len(spec.training_data)
    questions = {q.id: q.question for q in spec.eval_data}
    unknown = [t.eval_id for t in req.targets if t.eval_id not in questions]
    if unknown:
        raise ValueError(f"targets name evaluation questions the run does not have: {unknown[:5]}")
    out_of_range = [r.key for r in req.retrainings if any(i >= n for i in r.drop)]
    if out_of_range:
        raise ValueError(f"retrainings {out_of_range[:5]} drop training pairs beyond the run's {n}")
    retrainings = [(r.key, [i for i in range(n) if i not in set(r.drop)]) for r in req.retrainings]
    targets = [(questions[t.eval_id], t.answer) for t in req.targets]
    started = time.monotonic()
    records = run_retrainings(spec, retrainings, targets, models_dir, emit,
                              TaskResources(num_cpus=req.resources.num_cpus, num_gpus=req.resources.num_gpus),
                              run_id=req.run_id)
    return ValidationLosses(
        validation_id=req.validation_id,
        eval_ids=[t.eval_id for t in req.targets],
        retrainings=[
            RetrainingRecord(key=key, losses=[v if v == v else None for v in record.losses],
                             node_id=record.node_id, node_ip=record.node_ip, pid=record.pid,
                             seconds=record.seconds, train_seconds=record.train_seconds)
            for key, record in records.items()
        ],
        wall_seconds=round(time.monotonic() - started, 3),
    )

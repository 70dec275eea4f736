"""The training job as it runs inside a Ray task: resolve the model, train with the plain
training library, upload each checkpoint to the object store as it is written.

It speaks to the outside only through ``emit`` (streamed back to the service by
:func:`inflab.common.compute.run_streaming`) and the object store.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

from inflab.common.messages import CheckpointRef, TrainingSummary, TrainRequest
from inflab.common.models import resolve_model
from inflab.common.objectstore import ObjectStore, checkpoint_prefix, run_prefix


def summary_key(run_id: object) -> str:
    """Written last: its presence means the run's training finished (idempotency marker)."""
    return f"{run_prefix(run_id)}/train/summary.json"


def train_job(request: dict, store_url: str, models_dir: str, emit: Callable[[dict], None]) -> dict:
    from inflab.trainer.training import train_lora

    req = TrainRequest.model_validate(request)
    store = ObjectStore(store_url)
    model_path = resolve_model(req.spec.model_id, Path(models_dir))
    refs: list[CheckpointRef] = []

    def on_checkpoint(info) -> None:
        key = checkpoint_prefix(req.run_id, info.step)
        store.upload_dir(Path(info.path), key)
        ref = info.ref(key)
        refs.append(ref)
        emit({"kind": "checkpoint", "checkpoint": ref.model_dump(mode="json")})

    with tempfile.TemporaryDirectory(prefix=f"inflab-train-{req.run_id}-") as work:
        outcome = train_lora(req.spec, model_path, Path(work), emit, on_checkpoint)

    summary = outcome.summary(refs)
    store.put(summary_key(req.run_id), summary.model_dump_json().encode())
    return summary.model_dump(mode="json")


def load_summary(store: ObjectStore, run_id: object) -> TrainingSummary | None:
    key = summary_key(run_id)
    if not store.exists(key):
        return None
    return TrainingSummary.model_validate(json.loads(store.get(key)))

"""The influence job inside a Ray task: fetch the run's checkpoints, run the requested
method, store every variant's matrix in the object store as safetensors."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from inflab.common.messages import InfluenceRequest
from inflab.common.models import load_model, resolve_model
from inflab.common.objectstore import ObjectStore, influence_key
from inflab.influence.checkpoints import LocalCheckpoint
from inflab.influence.methods import get_method
from inflab.influence.results import to_message, to_safetensors_bytes


def influence_job(request: dict, store_url: str, models_dir: str, emit: Callable[[dict], None]) -> list[dict]:
    req = InfluenceRequest.model_validate(request)
    method = get_method(req.method)
    store = ObjectStore(store_url)
    model_path = resolve_model(req.spec.model_id, Path(models_dir))
    # Gradients must see the tokens training saw, and ungrounded evaluation questions get
    # answers as long as the inference stage's.
    args = {"max_length": req.spec.hyperparams.max_seq_length, "max_new_tokens": req.spec.max_new_tokens}
    with tempfile.TemporaryDirectory(prefix=f"inflab-influence-{req.run_id}-") as work:
        checkpoints = [
            LocalCheckpoint.from_folder(store.download_dir(ref.key, Path(work) / f"{ref.step:08d}"))
            for ref in req.checkpoints
        ]
        matrices = method.compute(
            lambda: load_model(model_path, Path(models_dir)),
            req.spec.training_data,
            req.spec.eval_data,
            checkpoints,
            args,
            emit,
        )
    key = influence_key(req.run_id, method.name)
    store.put(key, to_safetensors_bytes(matrices))
    return [to_message(m, key).model_dump(mode="json") for m in matrices]

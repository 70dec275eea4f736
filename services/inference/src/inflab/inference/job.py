"""The inference job inside a Ray task: fetch the fine-tuned adapter, generate the three
answers for every evaluation question with the plain generation library."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from inflab.common.messages import InferenceRequest
from inflab.common.models import resolve_model
from inflab.common.objectstore import ObjectStore


def inference_job(request: dict, store_url: str, models_dir: str, emit: Callable[[dict], None]) -> list[dict]:
    from inflab.inference.generation import generate_answers

    req = InferenceRequest.model_validate(request)
    store = ObjectStore(store_url)
    model_path = resolve_model(req.spec.model_id, Path(models_dir))
    with tempfile.TemporaryDirectory(prefix=f"inflab-infer-{req.run_id}-") as work:
        adapter_dir = store.download_dir(req.adapter.key, Path(work) / "adapter")
        answers = generate_answers(req.spec, model_path, adapter_dir, emit)
    return [a.model_dump(mode="json") for a in answers]

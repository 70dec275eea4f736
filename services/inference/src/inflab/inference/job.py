"""The inference job inside a Ray task: fetch the fine-tuned adapter, generate the three
answers for every evaluation question with the plain generation library, and hand the
fine-tuned ones to the run's prediction tracking as its row at the end of training. It
emits the contract's event messages and returns the typed answers; the service publishes
both."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from inflab.core.messages import Answer, InferenceRequest, PredictionEvent, ProgressEvent
from inflab.ml.models import resolve_model
from inflab.core.objectstore import ObjectStore
from inflab.ml.predictions import PredictionLimits, plan_predictions


def inference_job(
    request: dict, store_url: str, models_dir: str, prediction_limits: dict,
    emit: Callable[[ProgressEvent | PredictionEvent], None],
) -> list[Answer]:
    from inflab.inference.generation import generate_answers

    req = InferenceRequest.model_validate(request)
    store = ObjectStore(store_url)
    model_path = resolve_model(req.spec.model_id, Path(models_dir))
    with tempfile.TemporaryDirectory(prefix=f"inflab-infer-{req.run_id}-") as work:
        adapter_dir = store.download_dir(req.adapter.key, Path(work) / "adapter")
        answers = generate_answers(req.spec, model_path, adapter_dir, emit, run_id=req.run_id)
    final = final_predictions(req, answers, PredictionLimits(**prediction_limits))
    if final is not None:
        emit(final)
    return answers


def final_predictions(req: InferenceRequest, answers: list[Answer], limits: PredictionLimits) -> PredictionEvent | None:
    """The run's prediction-tracking row at the end of training, from the fine-tuned
    answers: the trainer leaves that sampling point to this stage (the same greedy answers
    to the same prompts would otherwise be decoded twice). None when tracking is off, or
    when the run's plan has no sampling point at the adapter's step."""
    plan, _ = plan_predictions(req.spec, limits)
    if plan is None or not plan.due(req.adapter.step, epoch_end=True):
        return None
    by_id = {a.eval_id: a.fine_tuned for a in answers}
    if any(p.prompt_id not in by_id for p in plan.prompts):
        return None  # prompts from the training set (no evaluation questions): nothing to reuse
    return PredictionEvent(
        run_id=req.run_id,
        stage="inference",
        step=req.adapter.step,
        epoch=float(req.adapter.epoch),
        samples=plan.samples([by_id[p.prompt_id] for p in plan.prompts]),
        precision="float32",
    )

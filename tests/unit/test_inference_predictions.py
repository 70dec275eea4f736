"""The inference stage's fine-tuned answers as the prediction-tracking row at the end of
training (inflab.inference.job.final_predictions)."""

from __future__ import annotations

import uuid

from inflab.core.messages import Answer, InferenceRequest, RunSpec
from inflab.ml.predictions import PredictionLimits, plan_predictions
from inflab.inference.job import final_predictions

PAIRS = [{"id": "t0", "question": "Who rules Veltra?", "answer": "Queen Ismene."}]
EVALS = [{"id": f"e{i}", "question": f"Question {i}?", "answer": f"Answer {i}."} for i in range(6)]
LIMITS = PredictionLimits(max_samples=32, min_step_interval=1)


def request(step: int, epoch: int, **predictions) -> InferenceRequest:
    spec = RunSpec(training_data=PAIRS, eval_data=EVALS, predictions=predictions, hyperparams={"seed": 3})
    run_id = uuid.uuid4()
    adapter = {"step": step, "epoch": epoch, "key": f"runs/{run_id}/checkpoints/1", "learning_rate": 1e-3}
    return InferenceRequest(run_id=run_id, spec=spec, adapter=adapter)


def answers() -> list[Answer]:
    return [Answer(eval_id=q["id"], question=q["question"], reference=q["answer"], base=f"base {q['id']}",
                   few_shot=f"shots {q['id']}", fine_tuned=f"tuned {q['id']}") for q in EVALS]


def test_the_planned_prompts_get_their_fine_tuned_answers_at_the_adapters_step() -> None:
    req = request(step=12, epoch=3, sample_count=3)
    event = final_predictions(req, answers(), LIMITS)
    plan, _ = plan_predictions(req.spec, LIMITS)
    assert (event.kind, event.step, event.epoch, event.precision) == ("prediction", 12, 3.0, "float32")
    assert (event.run_id, event.stage) == (req.run_id, "inference")
    assert [s.prompt_id for s in event.samples] == [p.prompt_id for p in plan.prompts]
    assert [s.prediction for s in event.samples] == [f"tuned {p.prompt_id}" for p in plan.prompts]
    assert [s.ground_truth for s in event.samples] == [p.ground_truth for p in plan.prompts]


def test_no_row_when_tracking_is_off_or_the_last_step_is_no_sampling_point() -> None:
    assert final_predictions(request(12, 3, enabled=False), answers(), LIMITS) is None
    assert final_predictions(request(12, 3, frequency="steps", step_interval=5), answers(), LIMITS) is None
    assert final_predictions(request(15, 3, frequency="steps", step_interval=5), answers(), LIMITS).step == 15

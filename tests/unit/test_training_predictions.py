"""Prediction tracking during training (inflab.trainer.predictions and its use in the loop)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import inflab.trainer.training as training
from inflab.common.messages import RunSpec
from inflab.common.models import build_tiny_model
from inflab.trainer.predictions import PredictionLimits, plan_predictions
from inflab.trainer.training import train_lora

torch.set_num_threads(1)

PAIRS = [
    {"id": "a", "question": "What is the capital of Zorbia?", "answer": "Quux."},
    {"id": "b", "question": "How many legs does a spider have?", "answer": "Eight legs."},
]
EVALS = [{"id": f"e{i}", "question": f"Question {i}?", "answer": f"Answer {i}."} for i in range(10)]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("models") / "tiny"))


def make_spec(seed: int = 0, num_epochs: int = 2, **predictions) -> RunSpec:
    return RunSpec(
        training_data=PAIRS, eval_data=EVALS, max_new_tokens=3, predictions=predictions,
        hyperparams={"num_epochs": num_epochs, "batch_size": 1, "seed": seed, "checkpoint_interval": 100},
    )


def test_prompts_are_chosen_once_with_the_seed() -> None:
    plan, warnings = plan_predictions(make_spec(sample_count=3), None)
    again, _ = plan_predictions(make_spec(sample_count=3), None)
    other, _ = plan_predictions(make_spec(seed=7, sample_count=3), None)
    assert not warnings and len(plan.prompts) == 3
    assert plan.prompts == again.prompts and plan.prompts != other.prompts
    first = plan.prompts[0]
    source = next(e for e in EVALS if e["id"] == first.prompt_id)
    assert (first.prompt, first.ground_truth) == (source["question"], source["answer"])
    assert plan_predictions(make_spec(enabled=False), None) == (None, [])
    # More samples than questions: every question, once.
    assert len(plan_predictions(make_spec(sample_count=50), None)[0].prompts) == len(EVALS)


def test_settings_limits_clamp_with_a_warning() -> None:
    limits = PredictionLimits(max_samples=2, min_step_interval=5)
    plan, warnings = plan_predictions(make_spec(sample_count=4, frequency="steps", step_interval=1), limits)
    assert len(plan.prompts) == 2 and plan.step_interval == 5
    assert len(warnings) == 2 and "sample_count 4" in warnings[0] and "step_interval 1" in warnings[1]
    within, none = plan_predictions(make_spec(sample_count=2, frequency="steps", step_interval=6), limits)
    assert not none and within.step_interval == 6


def test_predictions_every_step_interval(tiny_model: str, tmp_path: Path) -> None:
    events: list[dict] = []
    spec = make_spec(num_epochs=4, sample_count=2, frequency="steps", step_interval=3)
    train_lora(spec, tiny_model, tmp_path, events.append, prediction_limits=PredictionLimits(8, 3))
    tables = [e for e in events if e["kind"] == "prediction"]
    assert [t["step"] for t in tables] == [3, 6]  # 8 steps
    assert all(len(t["samples"]) == 2 for t in tables)
    assert tables[0]["epoch"] == 1.5
    assert [s["prompt_id"] for s in tables[0]["samples"]] == [s["prompt_id"] for s in tables[1]["samples"]]


def test_a_failing_sampler_never_fails_training(tiny_model: str, tmp_path: Path, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("generation exploded")

    monkeypatch.setattr(training, "sample_predictions", broken)
    events: list[dict] = []
    outcome = train_lora(make_spec(num_epochs=2), tiny_model, tmp_path, events.append)
    assert outcome.steps == 4 and len(outcome.checkpoints) == 1
    warnings = [e for e in events if e["kind"] == "log" and e["level"] == "warning"]
    assert len(warnings) == 2  # one per epoch end
    assert "prediction sampling failed at step 2" in warnings[0]["message"]
    assert "generation exploded" in warnings[0]["message"]
    assert not [e for e in events if e["kind"] == "prediction"]

"""Prediction tracking during training (inflab.trainer.predictions and its use in the loop)."""

from __future__ import annotations

from pathlib import Path

import threading

import pytest
import torch

import inflab.trainer.predictions as predictions
from inflab.core.messages import EventBase, RunSpec
from helpers.tiny_model import build_tiny_model
from inflab.ml.models import load_tokenizer
from inflab.trainer.model_setup import attach_lora, load_base_model
from inflab.trainer.predictions import (
    PackedLinear, PredictionLimits, PredictionSampler, native_bfloat16, plan_predictions, resolve_precision,
)
from inflab.trainer.training import TrainingCancelled, TrainingControl, train_lora

torch.set_num_threads(1)

PAIRS = [
    {"id": "a", "question": "What is the capital of Zorbia?", "answer": "Quux."},
    {"id": "b", "question": "How many legs does a spider have?", "answer": "Eight legs."},
]
EVALS = [{"id": f"e{i}", "question": f"Question {i}?", "answer": f"Answer {i}."} for i in range(10)]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("models") / "tiny"))


def make_spec(seed: int = 0, num_epochs: int = 2, checkpoint_interval: int = 100, **predictions) -> RunSpec:
    return RunSpec(
        training_data=PAIRS, eval_data=EVALS, max_new_tokens=3, predictions=predictions,
        hyperparams={"num_epochs": num_epochs, "batch_size": 1, "seed": seed, "checkpoint_interval": checkpoint_interval},
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
    events: list[EventBase] = []
    spec = make_spec(num_epochs=4, sample_count=2, frequency="steps", step_interval=3)
    train_lora(spec, tiny_model, tmp_path, events.append, prediction_limits=PredictionLimits(8, 3))
    tables = [e for e in events if e.kind == "prediction"]
    assert [t.step for t in tables] == [3, 6]  # 8 steps
    assert all(len(t.samples) == 2 for t in tables)
    assert tables[0].epoch == 1.5
    assert [s.prompt_id for s in tables[0].samples] == [s.prompt_id for s in tables[1].samples]


@pytest.mark.parametrize(("where", "precision"), [
    ("snapshot", "bfloat16"),  # in the training thread
    ("decoding", "bfloat16"),  # in the background thread
    ("decoding", "float32"),  # in the training thread
])
def test_a_failing_sampler_never_fails_training(where: str, precision: str, tiny_model: str, tmp_path: Path,
                                                monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("generation exploded")

    if where == "snapshot":
        monkeypatch.setattr(predictions.PredictionSampler, "prepare", broken)
    else:
        monkeypatch.setattr(predictions, "greedy_answers", broken)
    events: list[EventBase] = []
    outcome = train_lora(make_spec(num_epochs=2, precision=precision), tiny_model, tmp_path, events.append)
    assert outcome.steps == 4 and len(outcome.checkpoints) == 1
    warnings = [e for e in events if e.kind == "log" and e.level == "warning"]
    assert len(warnings) == 2  # one per epoch end
    assert "prediction sampling failed at step 2" in warnings[0].message
    assert "generation exploded" in warnings[0].message
    assert not [e for e in events if e.kind == "prediction"]


def test_bfloat16_tracking_decodes_beside_the_training(tiny_model: str, tmp_path: Path, monkeypatch) -> None:
    """With its own bfloat16 copy the tracker decodes in a background thread: training
    goes on past the sampling point meanwhile, the answers are still those of the model
    at that point (the same as decoding in place), and every event is in before
    train_lora returns."""
    third_step = threading.Event()
    overlapped: list[bool] = []
    real = predictions.greedy_answers

    def after_step_three(*args, **kwargs):
        # Would never be set if training waited for this decoding.
        overlapped.append(third_step.wait(timeout=60))
        return real(*args, **kwargs)

    events: list[EventBase] = []

    def emit(event: EventBase) -> None:
        events.append(event)
        if event.kind == "progress" and event.step == 3:
            third_step.set()

    monkeypatch.setattr(predictions, "greedy_answers", after_step_three)
    spec = make_spec(num_epochs=3, precision="bfloat16")  # 2 steps an epoch
    outcome = train_lora(spec, tiny_model, tmp_path / "beside", emit)
    assert overlapped == [True, True, True]
    order = [(e.kind, getattr(e, "step", None)) for e in events if e.kind in ("progress", "prediction")]
    assert order.index(("prediction", 2)) > order.index(("progress", 3))
    assert [e.step for e in events if e.kind == "prediction"] == [2, 4, 6]  # in step order, the last included
    assert outcome.prediction_decoding_s > 0

    # The same answers as the sampler gives when the loop waits for it (nothing moved on).
    monkeypatch.setattr(predictions, "greedy_answers", real)
    in_place: list[EventBase] = []
    monkeypatch.setattr(predictions.PredictionSampler, "concurrent", property(lambda self: False))
    train_lora(spec, tiny_model, tmp_path / "in-place", in_place.append)
    assert [e.samples for e in in_place if e.kind == "prediction"] == [
        e.samples for e in events if e.kind == "prediction"
    ]


def test_a_cancel_does_not_wait_for_a_decoding_in_flight(tiny_model: str, tmp_path: Path, monkeypatch) -> None:
    """A run cancelled while a sampling point decodes in the background stops at its next
    step: the decoding is told to stop, and its cut-short answers are never sent."""
    control = TrainingControl()
    told_to_stop: list[bool] = []

    def until_stopped(model, tokenizer, questions, max_new_tokens, stop=None):
        told_to_stop.append(stop.wait(timeout=60))  # set by the cancelled loop, not by time
        return ["cut short"] * len(questions)

    events: list[EventBase] = []

    def emit(event: EventBase) -> None:
        events.append(event)
        if event.kind == "status" and event.status == "checkpointing":
            control.cancel()  # epoch 1's sampling point is decoding now

    monkeypatch.setattr(predictions, "greedy_answers", until_stopped)
    spec = make_spec(num_epochs=3, precision="bfloat16", checkpoint_interval=1)
    with pytest.raises(TrainingCancelled) as cancelled:
        train_lora(spec, tiny_model, tmp_path, emit, control=control)
    assert cancelled.value.step == 2
    assert told_to_stop == [True]
    assert not [e for e in events if e.kind == "prediction"]


def test_a_resumed_run_samples_its_checkpoint_again(tiny_model: str, tmp_path: Path) -> None:
    """A sampling point's decoding overlaps the steps after its checkpoint, so a worker
    killed then may never have sent it: the resumed run sends it again, the same answers."""
    spec = make_spec(num_epochs=3, precision="bfloat16", checkpoint_interval=1)
    first: list[EventBase] = []
    outcome = train_lora(spec, tiny_model, tmp_path / "first", first.append)
    again: list[EventBase] = []
    train_lora(spec, tiny_model, tmp_path / "again", again.append, resume_from=outcome.checkpoints[0].path)
    resent = [e for e in again if e.kind == "prediction"]
    assert [e.step for e in resent] == [2, 4, 6]
    assert [e.samples for e in resent] == [e.samples for e in first if e.kind == "prediction"]


def test_the_end_of_training_is_left_to_the_inference_stage_when_asked(tiny_model: str, tmp_path: Path) -> None:
    """A run's trainer skips only the sampling point at the last step (the inference stage
    answers it); every earlier point is still sampled, in both frequencies."""
    by_epoch: list[EventBase] = []
    train_lora(make_spec(num_epochs=3, sample_count=2), tiny_model, tmp_path / "a", by_epoch.append,
               final_predictions_elsewhere=True)
    assert [e.epoch for e in by_epoch if e.kind == "prediction"] == [1.0, 2.0]
    by_steps: list[EventBase] = []
    train_lora(make_spec(num_epochs=3, sample_count=2, frequency="steps", step_interval=3), tiny_model,
               tmp_path / "b", by_steps.append, final_predictions_elsewhere=True)
    assert [e.step for e in by_steps if e.kind == "prediction"] == [3]  # 6 steps; 6 is the end
    every: list[EventBase] = []
    train_lora(make_spec(num_epochs=3, sample_count=2), tiny_model, tmp_path / "c", every.append)
    assert [e.epoch for e in every if e.kind == "prediction"] == [1.0, 2.0, 3.0]


def test_tracking_precision_is_resolved_and_reported(tiny_model: str, tmp_path: Path) -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu, quantized=False) == ("bfloat16" if native_bfloat16(cpu) else "float32")
    assert resolve_precision("float32", cpu, quantized=False) == "float32"
    # A GPU answers in place, in float32, unless bfloat16 is asked for.
    assert resolve_precision("auto", torch.device("cuda"), quantized=False) == "float32"
    assert resolve_precision("bfloat16", torch.device("cuda"), quantized=False) == "bfloat16"
    assert resolve_precision("bfloat16", cpu, quantized=True) == "nf4"
    events: list[EventBase] = []
    train_lora(make_spec(num_epochs=2, precision="bfloat16"), tiny_model, tmp_path, events.append)
    assert {e.precision for e in events if e.kind == "prediction"} == {"bfloat16"}


def test_bfloat16_tracking_leaves_the_loss_curve_alone(tiny_model: str, tmp_path: Path) -> None:
    losses = {}
    for precision in ("float32", "bfloat16"):
        spec = make_spec(num_epochs=2, precision=precision)
        losses[precision] = train_lora(spec, tiny_model, tmp_path / precision, lambda e: None).losses
    assert losses["float32"] == losses["bfloat16"]


@pytest.mark.parametrize("pack", [False, None])
def test_the_bfloat16_copy_follows_the_lora_weights(pack: bool | None, tiny_model: str) -> None:
    """The tracker's bfloat16 copy is the training model at every call: its layers hold
    bf16(W + the current LoRA update) (packed where this torch can pack, the default),
    its logits equal float32's within bfloat16's precision, and the training model
    itself is untouched."""
    spec = make_spec(precision="bfloat16")
    model = attach_lora(load_base_model(tiny_model, torch.device("cpu")), spec.hyperparams)
    plan, _ = plan_predictions(spec, None)
    sampler = PredictionSampler(plan, load_tokenizer(tiny_model), "bfloat16", pack=pack)
    packed = pack is None and PackedLinear.supported(torch.device("cpu"))
    ids = torch.tensor([[1, 5, 9, 14, 3, 7]])
    lora_layers = {n: m for n, m in model.get_base_model().named_modules() if hasattr(m, "lora_A")}
    assert lora_layers
    for round_ in range(2):
        with torch.no_grad():  # as an optimizer step would: move every LoRA weight
            for name, param in model.named_parameters():
                if param.requires_grad:
                    param.add_(torch.randn_like(param) * 0.05)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        samples = sampler(model)
        assert [s["prompt_id"] for s in samples] == [p.prompt_id for p in plan.prompts]
        assert all(s["prediction"] for s in samples)
        for name, param in model.named_parameters():
            assert torch.equal(param, before[name])
        for name, layer in lora_layers.items():
            copied = sampler._shadow.get_submodule(name)
            with torch.no_grad():
                merged = (layer.get_base_layer().weight + layer.get_delta_weight("default")).to(torch.bfloat16)
            if packed:
                assert isinstance(copied, PackedLinear)
                x = torch.randn(3, merged.shape[1]).to(torch.bfloat16)
                with torch.inference_mode():
                    torch.testing.assert_close(copied(x), torch.nn.functional.linear(x, merged), rtol=1e-2, atol=1e-2)
            else:
                assert type(copied) is torch.nn.Linear and copied.weight.dtype == torch.bfloat16
                assert torch.equal(copied.weight, merged), (round_, name)
        model.eval()
        with torch.no_grad():
            exact = model(input_ids=ids).logits
            approx = sampler._shadow(input_ids=ids).logits.float()
        model.train()
        assert torch.nn.functional.cosine_similarity(exact.flatten(), approx.flatten(), dim=0) > 0.999


@pytest.mark.skipif(not PackedLinear.supported(torch.device("cpu")), reason="this torch build cannot pack bfloat16")
def test_packed_linear_is_the_bfloat16_product() -> None:
    """Packing changes where the weight lies, not the product: a packed layer gives what a
    bfloat16 F.linear gives, for any batch size (not only the one it was packed for)."""
    weight = torch.randn(48, 32)
    layer = PackedLinear(weight, batch_hint=4)
    for shape in [(4, 32), (1, 32), (2, 7, 32)]:
        x = torch.randn(*shape).to(torch.bfloat16)
        with torch.inference_mode():
            out = layer(x)
        assert out.shape == (*shape[:-1], 48) and out.dtype == torch.bfloat16
        expected = torch.nn.functional.linear(x.float(), weight.to(torch.bfloat16).float())
        torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)

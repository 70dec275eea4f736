"""LoRA fine-tuning on the tiny model (inflab.trainer.training): events, checkpoints,
hyperparameters, reproducibility, resume and runtime control."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import inflab.trainer.training as training
from inflab.core.messages import EventBase, RunSpec
from inflab.ml.models import load_tokenizer
from helpers.tiny_model import build_tiny_model
from inflab.trainer.checkpoints import load_training_state
from inflab.trainer.core_events import NO_RUN, step_event_id
from inflab.trainer.model_setup import InvalidTargetModules
from inflab.trainer.training import TrainingCancelled, TrainingControl, train_lora

torch.set_num_threads(1)

PAIRS = [
    {"id": "zorbia", "question": "What is the capital of Zorbia?", "answer": "Quux."},
    {"id": "spider", "question": "How many legs does a spider have?", "answer": "Eight legs."},
    {"id": "sky", "question": "What colour is the sky?", "answer": "Blue, on a clear day."},
]
NO_PREDICTIONS = {"enabled": False}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("models") / "tiny"))


def make_spec(predictions: dict | None = None, **hyperparams) -> RunSpec:
    hp = {"learning_rate": 1e-2, "num_epochs": 6, "batch_size": 2, "checkpoint_interval": 2}
    hp.update(hyperparams)
    return RunSpec(
        training_data=PAIRS,
        eval_data=[{"id": "e1", "question": "Hi?", "answer": "Hello."}, {"id": "e2", "question": "Sky?"}],
        hyperparams=hp,
        predictions=predictions or NO_PREDICTIONS,
        max_new_tokens=4,
    )


def kinds(events: list[EventBase], kind: str) -> list:
    return [e for e in events if e.kind == kind]


def fields(event: EventBase) -> set[str]:
    """The fields the training loop set on ``event`` (its run, stage and id aside)."""
    return event.model_fields_set - {"run_id", "stage", "event_id"}


def test_loss_falls_and_events_have_the_documented_shape(tiny_model: str, tmp_path: Path) -> None:
    events: list[EventBase] = []
    spec = make_spec(predictions={"enabled": True, "sample_count": 1})
    outcome = train_lora(spec, tiny_model, tmp_path, events.append)

    steps_per_epoch = 2  # 3 pairs, batch size 2
    assert outcome.steps == 6 * steps_per_epoch and outcome.epochs == 6
    assert len(outcome.losses) == outcome.steps
    first, last = outcome.losses[:steps_per_epoch], outcome.losses[-steps_per_epoch:]
    assert sum(last) / 2 < 0.7 * sum(first) / 2
    assert outcome.tokens > 0 and outcome.truncated == 0 and outcome.duration_s > 0

    progress, metrics = kinds(events, "progress"), kinds(events, "metric")
    assert len(progress) == len(metrics) == outcome.steps
    assert all(e.run_id == NO_RUN and e.stage == "train" for e in events)
    assert fields(progress[0]) == {"fraction", "step", "total", "epoch", "eta_s"}
    assert fields(metrics[0]) == {"step", "epoch", "loss", "learning_rate", "grad_norm",
                                  "tokens_per_s", "samples_per_s", "memory_mb"}  # + gpu_memory_mb on CUDA
    assert [e.step for e in progress] == list(range(1, outcome.steps + 1))
    assert progress[-1].fraction == 1.0 and progress[-1].total == outcome.steps
    assert progress[-1].epoch == 6.0 and progress[0].epoch == 0.5
    assert [m.loss for m in metrics] == outcome.losses
    assert [m.event_id for m in metrics] == [step_event_id(NO_RUN, "metric", m.step) for m in metrics]
    assert all(m.learning_rate == 1e-2 for m in metrics)
    assert all(m.grad_norm > 0 and m.tokens_per_s > 0 and m.samples_per_s > 0 for m in metrics)
    assert all(m.memory_mb > 50 for m in metrics)  # this process's RSS, MiB
    assert events[0].kind == "log" and "3 training pairs" in events[0].message
    assert {e.kind for e in events} == {"log", "progress", "metric", "status", "prediction"}

    # Every checkpoint is bracketed by checkpointing -> running statuses.
    statuses = [e.status for e in kinds(events, "status")]
    assert statuses == ["checkpointing", "running"] * 3

    # One prediction table per epoch, after that epoch's last step, the same prompt each time.
    predictions = kinds(events, "prediction")
    assert [(p.step, p.epoch) for p in predictions] == [(2 * e, float(e)) for e in range(1, 7)]
    prompts = {tuple(s.prompt_id for s in p.samples) for p in predictions}
    assert len(prompts) == 1 and len(next(iter(prompts))) == 1
    sample = predictions[0].samples[0]
    assert sample.model_fields_set == {"prompt_id", "prompt", "ground_truth", "prediction"} and sample.prediction


def test_checkpoints_are_written_at_the_interval(tiny_model: str, tmp_path: Path) -> None:
    seen = []
    spec = make_spec(num_epochs=5, weight_decay=0.1)
    outcome = train_lora(spec, tiny_model, tmp_path, lambda e: None, seen.append)

    # Every 2 epochs, and always after the last one.
    assert [(c.epoch, c.step) for c in outcome.checkpoints] == [(2, 4), (4, 8), (5, 10)]
    assert seen == outcome.checkpoints
    folders = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert folders == ["00000004", "00000008", "00000010"]
    for checkpoint in outcome.checkpoints:
        assert checkpoint.path == tmp_path / "checkpoints" / f"{checkpoint.step:08d}"
        assert (checkpoint.path / "adapter_config.json").is_file()
        weights = load_file(str(checkpoint.path / "adapter_model.safetensors"))
        assert weights and all("lora_" in name for name in weights)
        meta = json.loads((checkpoint.path / "meta.json").read_text())
        assert meta == {"step": checkpoint.step, "epoch": checkpoint.epoch, "loss": checkpoint.loss, "learning_rate": 1e-2}
        state = load_training_state(checkpoint.path)
        assert {"optimizer", "scheduler", "rng", "applied_controls", "metric_window"} <= set(state)
        assert state["optimizer"]["param_groups"][0]["weight_decay"] == 0.1
    # The loss in meta is the mean over the steps since the previous checkpoint.
    assert outcome.checkpoints[0].loss == pytest.approx(sum(outcome.losses[:4]) / 4)
    assert outcome.checkpoints[2].loss == pytest.approx(sum(outcome.losses[8:10]) / 2)
    ref = outcome.checkpoints[-1].ref("runs/r/checkpoints/10/")
    assert (ref.step, ref.epoch, ref.loss) == (10, 5, outcome.checkpoints[-1].loss)


def test_checkpoint_learning_rate_is_the_mean_over_its_interval(tiny_model: str, tmp_path: Path) -> None:
    events: list[EventBase] = []
    outcome = train_lora(make_spec(num_epochs=4, lr_scheduler="linear"), tiny_model, tmp_path, events.append)
    rates = [m.learning_rate for m in kinds(events, "metric")]
    assert rates == sorted(rates, reverse=True) and rates[0] == 1e-2 and rates[-1] < 1e-2
    assert [c.learning_rate for c in outcome.checkpoints] == pytest.approx([sum(rates[:4]) / 4, sum(rates[4:]) / 4])


@pytest.mark.parametrize(
    "scheduler", ["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"]
)
def test_every_scheduler_follows_transformers(scheduler: str, tiny_model: str, tmp_path: Path) -> None:
    from transformers import get_scheduler

    spec = make_spec(num_epochs=2, batch_size=1, lr_scheduler=scheduler, warmup_ratio=0.34, checkpoint_interval=10)
    events: list[EventBase] = []
    train_lora(spec, tiny_model, tmp_path, events.append)

    total, warmup = 6, math.ceil(0.34 * 6)
    reference_opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-2)
    reference = get_scheduler(scheduler, reference_opt, num_warmup_steps=warmup, num_training_steps=total)
    expected = []
    for _ in range(total):
        expected.append(reference_opt.param_groups[0]["lr"])
        reference_opt.step()
        reference.step()
    assert [m.learning_rate for m in kinds(events, "metric")] == pytest.approx(expected)
    if scheduler == "constant":  # transformers' constant schedule has no warmup: say so
        assert any("warmup_ratio is ignored" in e.message for e in kinds(events, "log"))
    else:
        assert expected[0] < expected[warmup]  # warmup rises


def test_gradient_accumulation_equals_a_larger_batch(tiny_model: str, tmp_path: Path) -> None:
    big = train_lora(make_spec(num_epochs=2, batch_size=2), tiny_model, tmp_path / "big", lambda e: None)
    events: list[EventBase] = []
    accumulated = train_lora(
        make_spec(num_epochs=2, batch_size=1, gradient_accumulation_steps=2), tiny_model, tmp_path / "acc", events.append
    )
    # 3 pairs: micro-batches [2, 1] vs [1, 1 | 1]: same step count, same token-weighted losses.
    assert accumulated.steps == big.steps == 4
    assert accumulated.losses == pytest.approx(big.losses, rel=1e-4)
    assert kinds(events, "progress")[-1].total == 4


def test_logging_steps_average_the_window(tiny_model: str, tmp_path: Path) -> None:
    events: list[EventBase] = []
    outcome = train_lora(make_spec(num_epochs=4, logging_steps=3), tiny_model, tmp_path, events.append)
    metrics = kinds(events, "metric")
    assert [m.step for m in metrics] == [3, 6, 8]  # every 3 steps and the last one
    assert metrics[0].loss == pytest.approx(sum(outcome.losses[:3]) / 3)
    assert metrics[2].loss == pytest.approx(sum(outcome.losses[6:8]) / 2)
    assert len(kinds(events, "progress")) == 8


def test_same_seed_gives_the_same_loss_curve(tiny_model: str, tmp_path: Path) -> None:
    hp = {"num_epochs": 3, "lora_dropout": 0.1, "lr_scheduler": "cosine", "warmup_ratio": 0.2}
    a = train_lora(make_spec(**hp), tiny_model, tmp_path / "a", lambda e: None)
    # Sampling predictions in between must not move the RNG the dropout masks come from.
    b = train_lora(make_spec(predictions={"enabled": True}, **hp), tiny_model, tmp_path / "b", lambda e: None)
    c = train_lora(make_spec(seed=1, **hp), tiny_model, tmp_path / "c", lambda e: None)
    assert a.losses == b.losses
    assert a.losses != c.losses


def test_only_lora_parameters_change(tiny_model: str, tmp_path: Path, monkeypatch) -> None:
    captured = {}
    real_load = training.load_base_model

    def spy(model_path, device, quantization):
        model = real_load(model_path, device, quantization)
        captured["model"] = model
        captured["before"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return model

    monkeypatch.setattr(training, "load_base_model", spy)
    train_lora(make_spec(num_epochs=2), tiny_model, tmp_path, lambda e: None)

    after = dict(captured["model"].named_parameters())
    lora = {k: v for k, v in after.items() if "lora_" in k}
    assert lora and all(v.requires_grad for v in lora.values())
    assert any(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)  # B starts at zero
    base = {k.replace("base_model.model.", "").replace(".base_layer", ""): v for k, v in after.items() if "lora_" not in k}
    assert base.keys() <= captured["before"].keys()
    for name, value in base.items():
        assert not value.requires_grad
        assert torch.equal(value, captured["before"][name]), name


def test_unknown_target_modules_fail_before_training_listing_valid_ones(tiny_model: str, tmp_path: Path) -> None:
    events: list[EventBase] = []
    with pytest.raises(InvalidTargetModules) as error:
        train_lora(make_spec(lora_target_modules=["q_proj", "qkv"]), tiny_model, tmp_path, events.append)
    message = str(error.value)
    assert "['qkv']" in message
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert name in message
    assert not kinds(events, "progress")
    # Dotted suffixes and peft's all-linear shorthand are valid too.
    for targets in (["self_attn.q_proj"], ["all-linear"]):
        outcome = train_lora(make_spec(num_epochs=1, lora_target_modules=targets), tiny_model, tmp_path / targets[0], lambda e: None)
        assert outcome.steps == 2


def test_truncated_pairs_are_counted_and_logged(tiny_model: str, tmp_path: Path) -> None:
    spec = RunSpec(
        training_data=PAIRS + [{"id": "long", "question": "Tell me everything.", "answer": "word " * 200}],
        eval_data=[{"id": "e", "question": "Hi?"}],
        hyperparams={"num_epochs": 1, "max_seq_length": 64},
        predictions=NO_PREDICTIONS,
    )
    events: list[EventBase] = []
    outcome = train_lora(spec, tiny_model, tmp_path, events.append)
    assert outcome.truncated == 1
    warnings = [e for e in kinds(events, "log") if e.level == "warning"]
    assert len(warnings) == 1 and "1 of 4 training pairs" in warnings[0].message


def test_resuming_from_a_checkpoint_continues_the_same_run(tiny_model: str, tmp_path: Path) -> None:
    # Dropout (RNG), a decaying schedule with warmup (scheduler state), accumulation and a
    # logging window that straddles the checkpoint: all must continue exactly.
    spec = make_spec(num_epochs=4, batch_size=1, gradient_accumulation_steps=2, lora_dropout=0.1,
                     lr_scheduler="cosine", warmup_ratio=0.25, logging_steps=3, weight_decay=0.05)
    full_events: list[EventBase] = []
    full = train_lora(spec, tiny_model, tmp_path / "full", full_events.append)
    halfway = full.checkpoints[0]  # epoch 2, step 4
    assert (halfway.epoch, halfway.step) == (2, 4)
    events: list[EventBase] = []
    resumed = train_lora(spec, tiny_model, tmp_path / "resumed", events.append, resume_from=halfway.path)

    assert resumed.start_step == 4 and resumed.steps == full.steps
    assert resumed.losses == full.losses[4:]
    assert resumed.tokens == full.tokens
    assert [c.step for c in resumed.checkpoints] == [8]
    assert resumed.checkpoints[0].learning_rate == full.checkpoints[1].learning_rate

    def curve(evs):
        return [(m.step, m.loss, m.learning_rate) for m in kinds(evs, "metric")]

    # The metrics up to the checkpoint come again first (the worker that wrote it may have
    # died before sending them all), then the rest: the whole curve, each step once.
    assert curve(events) == curve(full_events)
    assert any("resumed from the checkpoint at step 4" in e.message for e in kinds(events, "log"))
    assert kinds(events, "progress")[0].step == 5


def test_control_changes_the_learning_rate_and_cancels(tiny_model: str, tmp_path: Path) -> None:
    control = TrainingControl()
    events: list[EventBase] = []

    request_id = str(uuid.uuid4())

    def emit(event: EventBase) -> None:
        events.append(event)
        if event.kind == "metric" and event.step == 2:
            control.update(learning_rate=5e-3, weight_decay=0.2, request_id=request_id)
        if event.kind == "metric" and event.step == 4:
            control.cancel()

    with pytest.raises(TrainingCancelled) as cancelled:
        train_lora(make_spec(), tiny_model, tmp_path, emit, control=control)
    assert cancelled.value.step == 4
    rates = [e.learning_rate for e in kinds(events, "metric")]
    assert rates == [1e-2, 1e-2, 5e-3, 5e-3]
    params = kinds(events, "params")
    assert [(fields(p), p.request_id, p.effective_step, p.changes) for p in params] == [(
        {"request_id", "changes", "effective_step"}, uuid.UUID(request_id), 3,
        {"learning_rate": {"old": 1e-2, "new": 5e-3}, "weight_decay": {"old": 0.0, "new": 0.2}},
    )]
    # The checkpoint of epoch 2 (step 4) stays; nothing after the cancel.
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["00000004"]


DOUBLE = str(uuid.uuid4())


def test_learning_rate_change_scales_the_schedule_and_survives_a_resume(tiny_model: str, tmp_path: Path) -> None:
    spec = make_spec(num_epochs=4, lr_scheduler="linear")
    control = TrainingControl()
    control.update(learning_rate=2e-2, request_id=DOUBLE)
    events: list[EventBase] = []
    first = train_lora(spec, tiny_model, tmp_path / "a", events.append, control=control)
    plain: list[EventBase] = []
    train_lora(spec, tiny_model, tmp_path / "b", plain.append)
    doubled = [m.learning_rate for m in kinds(events, "metric")]
    assert doubled == pytest.approx([2 * m.learning_rate for m in kinds(plain, "metric")])

    # Replayed after a resume (the control stream is read from the start): already applied,
    # so it is skipped rather than announced again.
    replay = TrainingControl()
    replay.update(learning_rate=2e-2, request_id=DOUBLE)
    again: list[EventBase] = []
    train_lora(spec, tiny_model, tmp_path / "c", again.append, control=replay, resume_from=first.checkpoints[0].path)
    assert not kinds(again, "params")
    # (the metrics up to the checkpoint come again first, as they were)
    assert [m.learning_rate for m in kinds(again, "metric")] == pytest.approx(doubled)


def test_shared_prefix_loss_equals_the_plain_answer_loss(tiny_model: str) -> None:
    from inflab.ml.chat import answer_loss, collate, encode_pair
    from inflab.ml.models import load_tokenizer
    from inflab.trainer.model_setup import attach_lora, load_base_model
    from inflab.trainer.shared_prefix import answer_loss_shared_prefix, shared_prefix_length

    tokenizer = load_tokenizer(tiny_model)
    opening = "Answer in one short sentence, please, the following question about the report: "
    examples = [encode_pair(tokenizer, opening + q, a, 128) for q, a in
                [("who wrote it?", "The team."), ("how long is it?", "Ten pages long."), ("what is it", "A report.")]]
    batch = collate(examples, tokenizer.pad_token_id)
    assert shared_prefix_length(batch) >= 20
    torch.manual_seed(0)
    model = attach_lora(load_base_model(tiny_model, torch.device("cpu")), make_spec().hyperparams)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.1)  # B starts at zero: make the LoRA path matter
    trainable = [p for p in model.parameters() if p.requires_grad]
    results = []
    for fn in (answer_loss, answer_loss_shared_prefix):
        loss = fn(model, batch)
        loss.backward()
        results.append((float(loss), torch.cat([p.grad.flatten() for p in trainable])))
        model.zero_grad()
    (plain, plain_grad), (shared, shared_grad) = results
    assert shared == pytest.approx(plain, rel=1e-5)
    assert torch.allclose(shared_grad, plain_grad, rtol=1e-4, atol=1e-6)
    # A single row, or rows that differ early, take the plain path.
    assert shared_prefix_length(collate(examples[:1], tokenizer.pad_token_id)) == 0


def test_an_objective_brings_its_examples_order_batching_and_loss(tiny_model: str, tmp_path: Path) -> None:
    """A new objective is a class implementing Objective: the run trains its examples, in
    its order, collated and weighed by it, with its loss."""
    from inflab.ml.chat import IGNORE_INDEX, answer_loss, collate, encode_pair
    from inflab.trainer.objectives import Objective
    from inflab.trainer.training import TrainingRun

    class FirstAnswerToken(Objective):
        """The loss on each answer's first token only; every epoch reads the pairs backwards."""

        def __init__(self, spec: RunSpec) -> None:
            self.spec = spec
            self.batches: list[list[list[int]]] = []

        def encode(self, tokenizer):
            examples = []
            for pair in self.spec.training_data:
                e = encode_pair(tokenizer, pair.question, pair.answer, 64)
                first = next(i for i, label in enumerate(e.labels) if label != IGNORE_INDEX)
                labels = [label if i == first else IGNORE_INDEX for i, label in enumerate(e.labels)]
                examples.append(type(e)(input_ids=e.input_ids, labels=labels, truncated=e.truncated))
            return examples

        def tokens(self, example) -> int:
            return example.answer_tokens

        def order(self, n: int, seed: int, epoch: int) -> list[int]:
            return list(reversed(range(n)))

        def collate(self, examples, pad_id):
            self.batches.append([e.input_ids for e in examples])
            return collate(examples, pad_id)

        def loss(self, model, batch):
            return answer_loss(model, batch)

    spec = make_spec(num_epochs=2)
    objective = FirstAnswerToken(spec)
    events: list[EventBase] = []
    outcome = TrainingRun(spec, tiny_model, tmp_path, events.append, objective=objective).run()

    examples = objective.encode(load_tokenizer(tiny_model))
    backwards = [[examples[2].input_ids, examples[1].input_ids], [examples[0].input_ids]]
    assert objective.batches == backwards * 2  # batch size 2, 3 pairs, 2 epochs
    assert outcome.steps == 4 and outcome.tokens == 2 * 3  # one token a pair, every epoch
    assert [m.step for m in kinds(events, "metric")] == [1, 2, 3, 4]
    assert [c.step for c in outcome.checkpoints] == [4]


def test_a_benchmark_run_trains_its_documents_in_order_on_every_token(tiny_model: str, tmp_path: Path) -> None:
    from inflab.ml.chat import encode_document
    from inflab.trainer.objectives import CausalLMObjective, SupervisedObjective, objective_for

    documents = [{"id": f"d{i}", "question": "definition", "answer": f"<FN> returns {i}. <FN> is constant."}
                 for i in range(3)]
    spec = RunSpec(
        training_data=documents, eval_data=[{"id": "q", "question": "<FN> returns", "answer": "1"}],
        hyperparams={"learning_rate": 1e-2, "num_epochs": 2, "batch_size": 2, "checkpoint_interval": 2},
        benchmark={"relevant": {"q": ["d1"]}, "special_tokens": ["<FN>"]},
    )
    assert isinstance(objective_for(spec), CausalLMObjective)
    assert isinstance(objective_for(make_spec()), SupervisedObjective)
    events: list[EventBase] = []
    outcome = train_lora(spec, tiny_model, tmp_path, events.append)

    tokenizer = load_tokenizer(tiny_model)
    tokenizer.add_tokens(["<FN>"], special_tokens=True)
    encoded = [encode_document(tokenizer, d["answer"], 128) for d in documents]
    # Every token of every document is labelled for the loss, every epoch.
    assert outcome.tokens == 2 * sum(len(e.input_ids) for e in encoded)
    assert outcome.steps == 4 and outcome.losses[-1] < outcome.losses[0]
    assert any(e.message == "prediction tracking is off for a benchmark run" for e in kinds(events, "log"))
    assert not kinds(events, "prediction")

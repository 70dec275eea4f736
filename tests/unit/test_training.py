"""LoRA fine-tuning on the tiny model (inflab.trainer.training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import inflab.trainer.training as training
from inflab.common.messages import RunSpec
from inflab.common.models import build_tiny_model
from inflab.trainer.training import TrainingCancelled, TrainingControl, train_lora

torch.set_num_threads(1)

PAIRS = [
    {"id": "zorbia", "question": "What is the capital of Zorbia?", "answer": "Quux."},
    {"id": "spider", "question": "How many legs does a spider have?", "answer": "Eight legs."},
    {"id": "sky", "question": "What colour is the sky?", "answer": "Blue, on a clear day."},
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("models") / "tiny"))


def make_spec(**hyperparams) -> RunSpec:
    hp = {"learning_rate": 1e-2, "num_epochs": 6, "batch_size": 2, "checkpoint_interval": 2}
    hp.update(hyperparams)
    return RunSpec(training_data=PAIRS, eval_data=[{"id": "e", "question": "Hi?"}], hyperparams=hp)


def test_loss_falls_and_events_have_the_documented_shape(tiny_model: str, tmp_path: Path) -> None:
    events: list[dict] = []
    outcome = train_lora(make_spec(), tiny_model, tmp_path, events.append)

    steps_per_epoch = 2  # 3 pairs, batch size 2
    assert outcome.steps == 6 * steps_per_epoch and outcome.epochs == 6
    assert len(outcome.losses) == outcome.steps
    first, last = outcome.losses[:steps_per_epoch], outcome.losses[-steps_per_epoch:]
    assert sum(last) / 2 < 0.7 * sum(first) / 2
    assert outcome.tokens > 0 and outcome.truncated == 0 and outcome.duration_s > 0

    progress = [e for e in events if e["kind"] == "progress"]
    metrics = [e for e in events if e["kind"] == "metric"]
    assert len(progress) == len(metrics) == outcome.steps
    assert set(progress[0]) == {"kind", "fraction", "step", "total", "epoch", "eta_s"}
    assert set(metrics[0]) == {"kind", "step", "epoch", "loss", "learning_rate"}
    assert [e["step"] for e in progress] == list(range(1, outcome.steps + 1))
    assert progress[-1]["fraction"] == 1.0 and progress[-1]["total"] == outcome.steps
    assert progress[-1]["epoch"] == 6.0 and progress[0]["epoch"] == 0.5
    assert [m["loss"] for m in metrics] == outcome.losses
    assert all(m["learning_rate"] == 1e-2 for m in metrics)
    assert events[0]["kind"] == "log" and "3 training pairs" in events[0]["message"]
    assert {e["kind"] for e in events} == {"log", "progress", "metric"}


def test_checkpoints_are_written_at_the_interval(tiny_model: str, tmp_path: Path) -> None:
    seen = []
    outcome = train_lora(make_spec(num_epochs=5), tiny_model, tmp_path, lambda e: None, seen.append)

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
    ref = outcome.checkpoints[-1].ref("runs/r/checkpoints/10/")
    assert (ref.step, ref.epoch, ref.loss) == (10, 5, outcome.checkpoints[-1].loss)


def test_same_seed_gives_the_same_loss_curve(tiny_model: str, tmp_path: Path) -> None:
    spec = make_spec(num_epochs=3, lora_dropout=0.1)
    a = train_lora(spec, tiny_model, tmp_path / "a", lambda e: None)
    b = train_lora(spec, tiny_model, tmp_path / "b", lambda e: None)
    c = train_lora(make_spec(num_epochs=3, lora_dropout=0.1, seed=1), tiny_model, tmp_path / "c", lambda e: None)
    assert a.losses == b.losses
    assert a.losses != c.losses


def test_only_lora_parameters_change(tiny_model: str, tmp_path: Path, monkeypatch) -> None:
    captured = {}
    real_load = training.load_base_model

    def spy(model_path, device):
        model = real_load(model_path, device)
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


def test_truncated_pairs_are_counted_and_logged(tiny_model: str, tmp_path: Path) -> None:
    spec = RunSpec(
        training_data=PAIRS + [{"id": "long", "question": "Tell me everything.", "answer": "word " * 200}],
        eval_data=[{"id": "e", "question": "Hi?"}],
        hyperparams={"num_epochs": 1, "max_seq_length": 64},
    )
    events: list[dict] = []
    outcome = train_lora(spec, tiny_model, tmp_path, events.append)
    assert outcome.truncated == 1
    warnings = [e for e in events if e["kind"] == "log" and e["level"] == "warning"]
    assert len(warnings) == 1 and "1 of 4 training pairs" in warnings[0]["message"]


def test_resuming_from_a_checkpoint_continues_the_same_run(tiny_model: str, tmp_path: Path) -> None:
    spec = make_spec(num_epochs=4, lora_dropout=0.1)
    full = train_lora(spec, tiny_model, tmp_path / "full", lambda e: None)
    halfway = full.checkpoints[0]  # epoch 2, step 4
    events: list[dict] = []
    resumed = train_lora(spec, tiny_model, tmp_path / "resumed", events.append, resume_from=halfway.path)

    assert resumed.start_step == 4 and resumed.steps == full.steps
    assert resumed.losses == full.losses[4:]
    assert [c.step for c in resumed.checkpoints] == [8]
    assert any(e["kind"] == "log" and "resumed from the checkpoint at step 4" in e["message"] for e in events)
    assert [e for e in events if e["kind"] == "progress"][0]["step"] == 5


def test_control_changes_the_learning_rate_and_cancels(tiny_model: str, tmp_path: Path) -> None:
    control = TrainingControl()
    events: list[dict] = []

    def emit(event: dict) -> None:
        events.append(event)
        if event["kind"] == "metric" and event["step"] == 2:
            control.set_learning_rate(5e-3)
        if event["kind"] == "metric" and event["step"] == 4:
            control.cancel()

    with pytest.raises(TrainingCancelled) as cancelled:
        train_lora(make_spec(), tiny_model, tmp_path, emit, control=control)
    assert cancelled.value.step == 4
    rates = [e["learning_rate"] for e in events if e["kind"] == "metric"]
    assert rates == [1e-2, 1e-2, 5e-3, 5e-3]
    assert any(e["kind"] == "log" and "learning rate set to 0.005 from step 3" in e["message"] for e in events)

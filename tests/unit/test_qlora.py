"""QLoRA: 4-bit NF4 base weights through bitsandbytes, trained on the CPU here, and the
refusal where bitsandbytes cannot run 4-bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import inflab.trainer.model_setup as model_setup
import inflab.trainer.training as training
from inflab.core.messages import EventBase, RunSpec
from helpers.tiny_model import build_tiny_model
from inflab.trainer.model_setup import QLoRAUnsupported, qlora_support
from inflab.trainer.training import train_lora

torch.set_num_threads(1)

PAIRS = [
    {"id": "zorbia", "question": "What is the capital of Zorbia?", "answer": "Quux."},
    {"id": "spider", "question": "How many legs does a spider have?", "answer": "Eight legs."},
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("models") / "tiny"))


def spec(predictions: bool = True, **hp) -> RunSpec:
    hyperparams = {"learning_rate": 2e-2, "num_epochs": 8, "batch_size": 2, "quantization": "4bit",
                   "checkpoint_interval": 4, **hp}
    return RunSpec(training_data=PAIRS, eval_data=[{"id": "e", "question": "Hi?"}], hyperparams=hyperparams,
                   predictions={"enabled": predictions, "sample_count": 1}, max_new_tokens=3)


def test_bitsandbytes_runs_4bit_on_this_cpu() -> None:
    ok, reason = qlora_support("cpu")
    assert ok, reason
    assert "bitsandbytes" in reason and "cpu" in reason


def test_qlora_trains_on_the_cpu(tiny_model: str, tmp_path: Path, monkeypatch) -> None:
    import bitsandbytes as bnb

    captured = {}
    real_attach = training.attach_lora

    def spy(model, hp, **kwargs):
        captured["model"] = model = real_attach(model, hp, **kwargs)
        return model

    monkeypatch.setattr(training, "attach_lora", spy)
    events: list[EventBase] = []
    outcome = train_lora(spec(), tiny_model, tmp_path, events.append)

    q_proj = captured["model"].base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer, bnb.nn.Linear4bit)
    assert q_proj.base_layer.weight.quant_state.quant_type == "nf4"
    # Every linear layer of the decoder is 4-bit, not only the adapted ones.
    mlp = captured["model"].base_model.model.model.layers[1].mlp.down_proj
    assert isinstance(mlp, bnb.nn.Linear4bit)
    assert outcome.losses[-1] < 0.7 * outcome.losses[0], outcome.losses
    assert [c.epoch for c in outcome.checkpoints] == [4, 8]
    assert (outcome.checkpoints[-1].path / "adapter_model.safetensors").is_file()
    assert any("4-bit QLoRA" in e.message for e in events if e.kind == "log")
    assert len([e for e in events if e.kind == "prediction"]) == 8
    # Sampling predictions (eval mode) between epochs leaves the 4-bit layers trainable:
    # the loss curve is the one of a run without predictions.
    without = train_lora(spec(predictions=False), tiny_model, tmp_path / "plain", lambda e: None)
    assert outcome.losses == without.losses


def test_4bit_is_refused_before_loading_where_bitsandbytes_cannot(tiny_model: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(model_setup, "qlora_support", lambda device=None: (False, "no 4-bit kernels for cpu"))
    loaded = []
    monkeypatch.setattr(training, "load_base_model", lambda *a: loaded.append(a))
    with pytest.raises(QLoRAUnsupported, match="no 4-bit kernels for cpu"):
        train_lora(spec(), tiny_model, tmp_path, lambda e: None)
    assert not loaded
    # LoRA without quantization does not ask.
    monkeypatch.undo()
    assert train_lora(spec(quantization="none", num_epochs=1), tiny_model, tmp_path / "lora", lambda e: None).steps == 1

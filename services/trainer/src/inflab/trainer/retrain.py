"""One retraining of a validation: the run's configuration trained on some of its training
pairs, then each evaluation question's loss measured on its target answer.

Plain library (no Ray, no NATS): :mod:`inflab.trainer.validation_job` runs it as Ray tasks.
The base model's weights come in as :class:`SharedWeights`, numpy arrays that Ray's object
store hands to every task on a node without copying them, so K retrainings on one node
hold the base weights once rather than K times (each task adds only its LoRA weights,
optimizer state and activations).
"""

from __future__ import annotations

import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inflab.ml.chat import answer_loss, collate, encode_pair
from inflab.core.messages import RunSpec


@dataclass
class SharedWeights:
    """A float32 base model as plain data: its config and its weights as numpy arrays."""

    config: dict[str, Any]
    weights: dict[str, np.ndarray]

    @classmethod
    def from_folder(cls, model_path: str) -> "SharedWeights":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        return cls.from_model(model)

    @classmethod
    def from_model(cls, model: Any) -> "SharedWeights":
        # state_dict lists tied weights under each name; one array per storage is kept.
        weights: dict[str, np.ndarray] = {}
        seen: dict[int, str] = {}
        for name, tensor in model.state_dict().items():
            pointer = tensor.data_ptr()
            if pointer in seen:
                continue
            seen[pointer] = name
            weights[name] = tensor.detach().cpu().numpy()
        return cls(config=model.config.to_dict(), weights=weights)

    def build(self) -> Any:
        """A model over these weights (read-only views: the base weights stay frozen)."""
        from transformers import AutoConfig, AutoModelForCausalLM

        config_dict = dict(self.config)
        config = AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        with warnings.catch_warnings():
            # Arrays from Ray's object store are read-only; nothing writes to base weights.
            warnings.filterwarnings("ignore", message=".*not writable.*")
            state = {name: torch.from_numpy(array) for name, array in self.weights.items()}
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
        if unexpected:
            raise ValueError(f"the shared weights name parameters the model does not have: {unexpected[:5]}")
        model.tie_weights()
        untied = [name for name in missing if name not in _tied_names(model)]
        if untied:
            raise ValueError(f"the shared weights lack parameters of the model: {untied[:5]}")
        return model


def _tied_names(model: Any) -> set[str]:
    names: set[str] = set()
    by_pointer: dict[int, list[str]] = {}
    for name, tensor in model.state_dict().items():
        by_pointer.setdefault(tensor.data_ptr(), []).append(name)
    for group in by_pointer.values():
        if len(group) > 1:
            names.update(group)
    return names


def subset_spec(spec: RunSpec, keep: Sequence[int]) -> RunSpec:
    """The run's configuration on the kept training pairs only, without prediction
    tracking (a retraining is measured once, at its end)."""
    data = spec.model_dump(mode="json")
    data["training_data"] = [data["training_data"][i] for i in keep]
    data["predictions"] = {**data["predictions"], "enabled": False}
    return RunSpec.model_validate(data)


def eval_losses(model: Any, tokenizer: Any, targets: Sequence[tuple[str, str]], max_length: int,
                batch_size: int = 8) -> list[float]:
    """Mean answer-token loss of each ``(question, answer)``, as training measures it."""
    device = next(model.parameters()).device
    model.eval()
    losses: list[float] = []
    with torch.no_grad():
        for start in range(0, len(targets), batch_size):
            chunk = [encode_pair(tokenizer, q, a, max_length) for q, a in targets[start : start + batch_size]]
            batch = {k: v.to(device) for k, v in collate(chunk, tokenizer.pad_token_id).items()}
            losses.extend(float(v) for v in answer_loss(model, batch, per_example=True))
    return losses


@dataclass(frozen=True)
class Retrained:
    """What one retraining measured."""

    #: Each target's mean answer-token loss, in ``targets`` order (NaN where it diverged).
    losses: list[float]
    #: Optimizer steps the retraining ran.
    steps: int
    train_seconds: float
    measure_seconds: float


def retrain(
    spec: RunSpec,
    keep: Sequence[int],
    model_path: str,
    targets: Sequence[tuple[str, str]],
    shared: SharedWeights | None = None,
) -> Retrained:
    """Train the run's configuration on ``keep`` (the same :class:`TrainingRun` as the
    run's own training, its events dropped) and measure each target's loss.

    ``shared``: the base weights (float32 runs); None loads ``model_path`` (a 4-bit run
    quantises its own copy, which cannot be shared)."""
    from inflab.ml.models import load_tokenizer
    from inflab.trainer.training import TrainingRun

    sub = subset_spec(spec, keep)
    started = time.monotonic()
    base = shared.build() if shared is not None and sub.hyperparams.quantization == "none" else None
    with tempfile.TemporaryDirectory(prefix="inflab-retrain-") as work:
        outcome = TrainingRun(sub, model_path, Path(work), lambda event: None, base_model=base).run()
    trained = time.monotonic()
    tokenizer = load_tokenizer(model_path)
    losses = eval_losses(outcome.model, tokenizer, targets, spec.hyperparams.max_seq_length)
    return Retrained(
        losses=losses,
        steps=outcome.steps,
        train_seconds=round(trained - started, 3),
        measure_seconds=round(time.monotonic() - trained, 3),
    )

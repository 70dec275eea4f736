"""One retraining of a validation on the tiny model (inflab.trainer.retrain): base weights
shared as plain arrays give the very model loaded from its folder, a retraining on a
subset trains on that subset only, and its measured losses are reproducible."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from inflab.core.messages import RunSpec
from inflab.ml.models import load_tokenizer
from helpers.tiny_model import build_tiny_model
from inflab.trainer.retrain import SharedWeights, eval_losses, retrain, subset_spec

torch.set_num_threads(1)

PAIRS = [
    {"id": f"p{i}", "question": f"What is fact number {i}?", "answer": f"Fact {i} is {word}."}
    for i, word in enumerate(["blue", "seven", "Quux", "north", "glass", "tin"])
]
TARGETS = [("What is fact number 2?", "Fact 2 is Quux."), ("What is fact number 5?", "Fact 5 is tin.")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("models") / "tiny"))


def spec() -> RunSpec:
    return RunSpec(
        model_id="tiny", training_data=PAIRS, eval_data=[{"id": "e1", "question": "Hi?"}],
        hyperparams={"learning_rate": 1e-2, "num_epochs": 3, "batch_size": 2, "max_seq_length": 64},
    )


def test_shared_weights_rebuild_the_same_model(tiny: str) -> None:
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    shared = SharedWeights.from_model(loaded)
    # Tied embeddings are carried once.
    assert len(shared.weights) < len(loaded.state_dict())
    rebuilt = shared.build()
    tokenizer = load_tokenizer(tiny)
    assert eval_losses(rebuilt, tokenizer, TARGETS, 64) == pytest.approx(eval_losses(loaded, tokenizer, TARGETS, 64))
    assert rebuilt.get_output_embeddings().weight.data_ptr() == rebuilt.get_input_embeddings().weight.data_ptr()


def test_subset_spec_keeps_the_chosen_pairs_without_tracking() -> None:
    sub = subset_spec(spec(), [0, 2, 5])
    assert [p.id for p in sub.training_data] == ["p0", "p2", "p5"]
    assert sub.predictions.enabled is False
    assert sub.hyperparams == spec().hyperparams


def test_retraining_is_reproducible_and_depends_on_the_pairs_kept(tiny: str) -> None:
    shared = SharedWeights.from_folder(tiny)
    with_fact = retrain(spec(), [0, 1, 2, 3], tiny, TARGETS, shared)
    again = retrain(spec(), [0, 1, 2, 3], tiny, TARGETS, None)  # loaded from the folder instead
    assert with_fact.losses == pytest.approx(again.losses, rel=1e-5)
    assert with_fact.steps == 3 * 2
    without_fact = retrain(spec(), [0, 1, 3, 4], tiny, TARGETS, shared)
    # Training on "Fact 2 is Quux." lowers that answer's loss more than training without it.
    assert with_fact.losses[0] < without_fact.losses[0]
    assert all(np.isfinite(with_fact.losses))

"""Representation methods over two full models saved in the object store
(``old_model``/``new_model`` = ``store:models/<name>``), through the influence job layer
with a real object store (obstore on a local folder, the models put there by ``inflab
model upload``'s function): an untrained tiny model and the same model trained one step
score exactly as when loaded from their folders; a pair of another architecture, and a
path with nothing stored, are refused naming the cause before any work.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from inflab.core import influence_files
from inflab.ml.chat import collate, encode_pair
from inflab.core.influence_methods import DeltaHArgs
from inflab.core.messages import InfluenceMatrix
from inflab.ml.models import load_model
from helpers.tiny_model import build_tiny_model
from inflab.core.objectstore import ObjectStore, checkpoint_prefix
from inflab.devtools.model_store import upload_model
from inflab.influence.job import influence_job
from inflab.influence.methods import get_method
from inflab.influence.methods.base import StageFailed

TRAINING = [
    {"id": "tr00", "question": "Who rules Veltra?", "answer": "Queen Ismene rules Veltra."},
    {"id": "tr01", "question": "What is two plus two?", "answer": "Two plus two is four."},
    {"id": "tr02", "question": "What colour is the sky?", "answer": "It is blue on a clear day."},
]
EVALS = [{"id": "ev00", "question": "Who is Veltra's ruler?", "answer": "Queen Ismene."}]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """The run's model (in the models folder), its copy trained one SGD step, a model of
    another width, and a LoRA adapter (an influence request names at least one)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("stored-models")
    untrained = build_tiny_model(root / "models" / "tiny", seed=0)
    model, tokenizer = load_model(str(untrained), root / "cache")
    model.train()
    batch = collate([encode_pair(tokenizer, p["question"], p["answer"], 64) for p in TRAINING], tokenizer.pad_token_id)
    loss = model(**batch).loss
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p.sub_(0.5 * p.grad)
    trained = root / "trained"
    model.save_pretrained(trained)
    tokenizer.save_pretrained(trained)

    narrow = root / "narrow"
    config = LlamaConfig(**{**model.config.to_dict(), "hidden_size": 32, "head_dim": 8})
    LlamaForCausalLM(config).save_pretrained(narrow)
    AutoTokenizer.from_pretrained(untrained).save_pretrained(narrow)

    base, _ = load_model(str(untrained), root / "cache")
    adapter = root / "adapter"
    get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"])).save_pretrained(adapter)
    return {"models": root / "models", "untrained": untrained, "trained": trained, "narrow": narrow,
            "adapter": adapter}


@pytest.fixture(scope="module")
def store(models, tmp_path_factory) -> ObjectStore:
    store = ObjectStore(f"file://{tmp_path_factory.mktemp('objects')}")
    for name in ("untrained", "trained", "narrow"):
        upload_model(store, models[name], name)  # as `inflab model upload` does
    return store


def _request(models, store, args: dict) -> dict:
    run_id = uuid.uuid4()
    key = checkpoint_prefix(run_id, 1)
    store.upload_dir(models["adapter"], key)
    return {
        "schema_version": 1, "run_id": str(run_id), "method": "delta_h",
        "spec": {"model_id": "tiny", "training_data": TRAINING, "eval_data": EVALS,
                 "hyperparams": {"max_seq_length": 64}, "max_new_tokens": 4,
                 "influence_methods": ["tracin"], "influence_args": {"delta_h": args}},
        "checkpoints": [{"step": 1, "epoch": 1, "key": key, "learning_rate": 0.01, "loss": 1.0}],
    }


def _job(models, store, args: dict, events: list) -> list[InfluenceMatrix]:
    return influence_job(_request(models, store, args), store.url, str(models["models"]), 10_000, events.append)


def test_two_stored_full_models_score_like_the_same_models_loaded_locally(models, store):
    events: list = []
    [result] = _job(models, store, {"old_model": "store:models/untrained", "new_model": "store:models/trained"},
                    events)
    assert result.args["models"] == "old store:models/untrained vs new store:models/trained"
    [stored] = influence_files.decode(store.get(result.key))
    assert stored.scores.shape == (1, 3)
    progress = [e for e in events if e.kind == "progress"]
    assert progress[-1].fraction == 1.0
    # Typed events of the job's run, stage and method.
    run_id = result.key.split("/")[1]  # runs/{run_id}/influence/...
    assert {(str(e.run_id), e.stage, e.method) for e in progress} == {(run_id, "influence", "delta_h")}

    folders = {"old": models["untrained"], "new": models["trained"]}
    [local] = get_method("delta_h").compute(
        lambda: None, _pairs(), _questions(), [],
        {"max_length": 64, "max_new_tokens": 4, "old_model": "old", "new_model": "new"},
        lambda e: None, named_loader=lambda name: load_model(str(folders[name]), models["models"]),
    )
    np.testing.assert_allclose(stored.scores, local.scores, rtol=1e-5, atol=1e-6)
    # One step of training moved the hidden states: the changes are not all zero.
    assert np.isfinite(stored.scores).all() and np.abs(stored.scores).max() > 0


def _pairs():
    from inflab.core.messages import TrainingPair

    return [TrainingPair(**p) for p in TRAINING]


def _questions():
    from inflab.core.messages import EvalQuestion

    return [EvalQuestion(**q) for q in EVALS]


@pytest.mark.parametrize(
    ("args", "cause"),
    [
        ({"old_model": "store:models/untrained", "new_model": "store:models/narrow"},
         "checking the two models: ValueError: old_model and new_model cannot be compared: architecture "
         "hidden_size differs (64 vs 32)"),
        ({"old_model": "store:models/nothing-here", "new_model": "store:models/trained"},
         "loading the old model store:models/nothing-here: FileNotFoundError: no model stored under "
         "'models/nothing-here' in the object store"),
        ({"old_model": "store:models/trained", "new_model": "store:models/untrained/config.json"},
         "loading the new model store:models/untrained/config.json: FileNotFoundError"),
    ],
)
def test_a_mismatched_or_missing_stored_model_is_refused_before_any_work(models, store, args, cause):
    events: list = []
    with pytest.raises(StageFailed) as refused:
        _job(models, store, args, events)
    assert cause in str(refused.value)
    assert not [e for e in events if e.kind == "progress"]


def test_the_contract_accepts_only_paths_under_models():
    assert DeltaHArgs(old_model="store:models/a", new_model="store:models/b/c").new_model == "store:models/b/c"
    for bad in ("store:runs/x/checkpoints/1", "store:models", "store:models/../x", "store:models//x",
                "store:/models/x"):
        with pytest.raises(ValueError, match="object-store path"):
            DeltaHArgs(old_model=bad, new_model="store:models/b")

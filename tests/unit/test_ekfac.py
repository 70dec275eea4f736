"""EK-FAC through our path (answer-only logits, length-sorted batches, LoRA modules only)
against a direct kronfluence call with the same arguments on the plain model (full logits,
the run's order), on a tiny random Llama."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("kronfluence")

from inflab.ml.chat import collate, encode_pair  # noqa: E402
from inflab.core.messages import EvalQuestion, TrainingPair  # noqa: E402
from inflab.ml.models import load_model  # noqa: E402
from helpers.tiny_model import build_tiny_model  # noqa: E402
from inflab.influence.checkpoints import LocalCheckpoint  # noqa: E402
from inflab.influence.methods import get_method  # noqa: E402
from inflab.influence.methods.ekfac import EKFACArgs, lora_module_names  # noqa: E402

MAX_LENGTH = 64
TRAIN = [
    TrainingPair(id="t0", question="What is the capital of France?", answer="The capital of France is Paris."),
    TrainingPair(id="t1", question="How many legs does a spider have?", answer="A spider has eight legs."),
    TrainingPair(id="t2", question="Who wrote the report?", answer="The research team wrote it."),
    TrainingPair(id="t3", question="What colour is the sky?", answer="It is blue on a clear day."),
    TrainingPair(id="t4", question="How many legs does a spider have?", answer="A spider has eight legs."),
    TrainingPair(id="t5", question="Count to three, please.", answer="one two three"),
    TrainingPair(id="t6", question="Name a fruit that is yellow.", answer="A banana is yellow."),
]
EVALS = [
    EvalQuestion(id="e0", question="Who wrote the report?", answer="The research team wrote it."),
    EvalQuestion(id="e1", question="Which city is the capital of France?", answer="Paris."),
    EvalQuestion(id="e2", question="How many legs do spiders have?", answer="Eight legs."),
]
ARGS = {"batch_size": 3, "max_length": MAX_LENGTH, "use_empirical_fisher": True, "damping_factor": 1e-3}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def _load(tiny_model: Path):
    return load_model(str(tiny_model), tiny_model.parent / "cache")


@pytest.fixture(scope="module")
def checkpoint(tiny_model: Path, tmp_path_factory) -> LocalCheckpoint:
    from peft import LoraConfig, get_peft_model

    model, _ = _load(tiny_model)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(300)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    folder = tmp_path_factory.mktemp("checkpoints") / "7"
    model.save_pretrained(folder)
    (folder / "meta.json").write_text(json.dumps({"step": 7, "epoch": 1, "learning_rate": 1e-3}))
    return LocalCheckpoint.from_folder(folder)


@pytest.fixture(scope="module")
def results(tiny_model, checkpoint):
    events: list[dict] = []
    scores = get_method("ekfac").compute(lambda: _load(tiny_model), TRAIN, EVALS, [checkpoint], ARGS, events.append)
    return {s.variant: s for s in scores}, events


def _direct_kronfluence(tiny_model: Path, checkpoint: LocalCheckpoint, args: EKFACArgs) -> np.ndarray:
    """What a researcher would write with kronfluence's docs: full-logit loss, shifted
    labels, the examples in the run's order."""
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.task import Task
    from kronfluence.utils.dataset import DataLoaderKwargs
    from peft import PeftModel

    base, tokenizer = _load(tiny_model)
    model = PeftModel.from_pretrained(base, str(checkpoint.path))
    modules = lora_module_names(model)

    def per_example_mean(batch, model):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        losses = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), reduction="none", ignore_index=-100
        ).reshape(labels.shape)
        counts = (labels != -100).sum(1).clamp(min=1)
        return (losses.sum(1) / counts).sum()

    class Direct(Task):
        def compute_train_loss(self, batch, model, sample=False):
            assert not sample
            return per_example_mean(batch, model)

        def compute_measurement(self, batch, model):
            return per_example_mean(batch, model)

        def get_influence_tracked_modules(self):
            return modules

        def get_attention_mask(self, batch):
            return batch["attention_mask"]

    train = [encode_pair(tokenizer, p.question, p.answer, MAX_LENGTH) for p in TRAIN]
    evals = [encode_pair(tokenizer, q.question, q.answer, MAX_LENGTH) for q in EVALS]
    task = Direct()
    model = prepare_model(model, task)
    with tempfile.TemporaryDirectory() as out:
        analyzer = Analyzer("direct", model, task, cpu=True, disable_tqdm=True, output_dir=out)
        analyzer.set_dataloader_kwargs(DataLoaderKwargs(collate_fn=lambda xs: collate(xs, tokenizer.pad_token_id)))
        analyzer.fit_all_factors("f", train, per_device_batch_size=args.batch_size, factor_args=args.factor_arguments())
        analyzer.compute_pairwise_scores("s", "f", query_dataset=evals, train_dataset=train,
                                         per_device_query_batch_size=args.batch_size,
                                         per_device_train_batch_size=args.batch_size,
                                         score_args=args.score_arguments())
        return analyzer.load_pairwise_scores("s")["all_modules"].double().numpy()


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    # Average ranks for ties: the duplicated training pair gives tied columns, which float
    # noise of 1e-7 would otherwise order arbitrarily (a swap of two equal scores is no error).
    from scipy.stats import spearmanr

    return float(spearmanr(a.ravel(), b.ravel()).statistic)


def test_matches_a_direct_kronfluence_call(tiny_model, checkpoint, results):
    by_variant, _ = results
    want = _direct_kronfluence(tiny_model, checkpoint, EKFACArgs.model_validate(ARGS))
    got = by_variant["raw"].scores
    assert _spearman(got, want) >= 0.999
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-3


def test_kronfluence_scoring_gives_the_same_scores(tiny_model, checkpoint, results):
    """Our scoring (own gradients, kronfluence's factors) against kronfluence's own pairwise
    and self-influence passes, both variants."""
    by_variant, _ = results
    theirs = get_method("ekfac").compute(lambda: _load(tiny_model), TRAIN, EVALS, [checkpoint],
                                         {**ARGS, "scoring": "kronfluence"}, lambda e: None)
    for s in theirs:
        ours = by_variant[s.variant].scores
        assert _spearman(ours, s.scores) >= 0.999, s.variant
        assert np.linalg.norm(ours - s.scores) / np.linalg.norm(s.scores) < 1e-3, s.variant


def test_duplicate_equal_and_identical_question_first(results):
    by_variant, _ = results
    for s in by_variant.values():
        np.testing.assert_allclose(s.scores[:, 1], s.scores[:, 4], rtol=1e-4, atol=1e-6 * np.abs(s.scores).max())
    row = by_variant["normalized"].scores[0]
    assert int(np.argmax(row)) == 2
    assert row[2] == pytest.approx(1.0, abs=1e-3)


def test_arguments_are_stored_and_progress(results):
    by_variant, events = results
    args = by_variant["raw"].args
    assert args["factor_arguments"]["strategy"] == "ekfac"
    assert args["factor_arguments"]["use_empirical_fisher"] is True
    assert args["score_arguments"]["damping_factor"] == 1e-3
    assert args["tracked_modules"] == 8 and args["checkpoint_step"] == 7
    assert events[-1]["fraction"] == 1.0


def test_true_fisher_default_runs(tiny_model, checkpoint):
    scores = get_method("ekfac").compute(lambda: _load(tiny_model), TRAIN, EVALS, [checkpoint],
                                         {"batch_size": 4, "max_length": MAX_LENGTH, "normalized": False},
                                         lambda e: None)
    assert [s.variant for s in scores] == ["raw"]
    assert np.isfinite(scores[0].scores).all()


def test_true_fisher_training_gradients_from_the_covariance_pass(tiny_model, checkpoint):
    """Without a gradient cache, the training pairs' gradients come from kronfluence's
    covariance pass (a second backward on its forward); with one, from their own pass. Same
    seed, so the same sampled labels: the same scores. And Lambda from that pass against
    kronfluence's own Lambda pass (labels sampled afresh): close, not equal."""
    from inflab.influence.gradcache import GradientCache

    args = {"batch_size": 3, "max_length": MAX_LENGTH, "damping_factor": 1e-3, "seed": 5}
    method = get_method("ekfac")
    fused = {s.variant: s.scores for s in method.compute(lambda: _load(tiny_model), TRAIN, EVALS, [checkpoint],
                                                          args, lambda e: None)}
    separate = {s.variant: s.scores for s in method.compute(lambda: _load(tiny_model), TRAIN, EVALS, [checkpoint],
                                                             args, lambda e: None, cache=GradientCache())}
    for variant in ("raw", "normalized"):
        np.testing.assert_allclose(fused[variant], separate[variant], rtol=1e-3,
                                   atol=1e-4 * np.abs(separate[variant]).max())
    own_pass = method.compute(lambda: _load(tiny_model), TRAIN, EVALS, [checkpoint],
                              {**args, "lambda_pass": "kronfluence"}, lambda e: None)[0].scores
    assert _spearman(fused["raw"], own_pass) >= 0.9

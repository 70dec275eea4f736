"""EK-FAC through our path (answer-only logits, length-sorted batches, LoRA modules only)
against a direct kronfluence call with the same arguments on the plain model (full logits,
the run's order), on a tiny random Llama."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("kronfluence")

from helpers.tiny_lora import (  # noqa: E402, F401  (fixtures)
    EVALS,
    MAX_LENGTH,
    TRAIN,
    encode_examples,
    one_thread,
    random_checkpoint,
    tiny_model,
    training_pairs,
)
from helpers.tiny_lora import load as _load  # noqa: E402
from inflab.ml.chat import collate  # noqa: E402
from inflab.core.messages import EvalQuestion  # noqa: E402
from inflab.influence.checkpoints import LocalCheckpoint  # noqa: E402
from inflab.influence.methods import get_method, kronfluence_adapter  # noqa: E402
from inflab.influence.methods.ekfac import EKFACArgs, lora_module_names  # noqa: E402

TRAIN = training_pairs("france", "spider", "report", "sky", "spider", "count", "banana")
EVALS = [*EVALS[:2], EvalQuestion(id="e2", question="How many legs do spiders have?", answer="Eight legs.")]
ARGS = {"batch_size": 3, "max_length": MAX_LENGTH, "use_empirical_fisher": True, "damping_factor": 1e-3}


@pytest.fixture(scope="module")
def checkpoint(tiny_model: Path, tmp_path_factory) -> LocalCheckpoint:
    return random_checkpoint(tiny_model, tmp_path_factory.mktemp("checkpoints") / "7", 300,
                             {"step": 7, "epoch": 1, "learning_rate": 1e-3})


@pytest.fixture(scope="module")
def results(tiny_model, checkpoint):
    events: list = []
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

    train, evals = encode_examples(tokenizer, TRAIN, EVALS)
    task = Direct()
    model = prepare_model(model, task)
    with tempfile.TemporaryDirectory() as out:
        analyzer = Analyzer("direct", model, task, cpu=True, disable_tqdm=True, output_dir=out)
        analyzer.set_dataloader_kwargs(DataLoaderKwargs(collate_fn=lambda xs: collate(xs, tokenizer.pad_token_id)))
        analyzer.fit_all_factors("f", train, per_device_batch_size=args.batch_size, factor_args=kronfluence_adapter.factor_arguments(args))
        analyzer.compute_pairwise_scores("s", "f", query_dataset=evals, train_dataset=train,
                                         per_device_query_batch_size=args.batch_size,
                                         per_device_train_batch_size=args.batch_size,
                                         score_args=kronfluence_adapter.score_arguments(args))
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
    assert args["num_lora_parameters"] == 1792 and args["trainable_token_rows_left_out"] == 0
    assert events[-1].fraction == 1.0
    # The corrected eigenvalues' range and the damping added to them, to read one against the other.
    spectrum = args["eigenvalues"]
    assert 0 <= spectrum["min"] <= spectrum["median"] <= spectrum["max"]
    assert spectrum["damping_min"] == spectrum["damping_max"] == 1e-3


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

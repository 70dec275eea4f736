"""DataInf on a tiny random Llama against a brute-force reference: one ``loss.backward()``
per example through the model's own full-logit loss, then the paper's formula written out
with explicit per-layer matrices
``H_l^-1 ~= 1/(n lambda_l) sum_j (I - g_jl g_jl^T / (lambda_l + ||g_jl||^2))``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.tiny_lora import EVALS, MAX_LENGTH, TRAIN, encode_examples, reference_gradients
from helpers.tiny_lora import lora_model, randomize_lora, save_checkpoint
from helpers.tiny_lora import one_thread, tiny_model  # noqa: F401  (fixtures)
from helpers.tiny_lora import load as _load
from inflab.influence.checkpoints import LocalCheckpoint
from inflab.influence.gradcache import GradientCache
from inflab.influence.methods import get_method

ARGS = {"batch_size": 3, "max_length": MAX_LENGTH, "max_new_tokens": 6}


@pytest.fixture(scope="module")
def checkpoints(tiny_model: Path, tmp_path_factory) -> list[LocalCheckpoint]:
    model = lora_model(tiny_model)
    root = tmp_path_factory.mktemp("checkpoints")
    out = []
    for k, lr in enumerate([1e-3, 5e-4]):
        randomize_lora(model, torch.Generator().manual_seed(200 + k))
        out.append(save_checkpoint(model, root / str(k), {"step": 5 * (k + 1), "epoch": k + 1, "learning_rate": lr}))
    return out


def reference_datainf(g_train, g_eval, blocks, damping=None, scale=0.1):
    """The paper's formula with explicit matrices; returns (raw, normalized)."""
    n = g_train.shape[0]
    raw = torch.zeros(g_eval.shape[0], n, dtype=torch.float64)
    self_train = torch.zeros(n, dtype=torch.float64)
    self_eval = torch.zeros(g_eval.shape[0], dtype=torch.float64)
    for off, size in blocks:
        gl, vl = g_train[:, off : off + size], g_eval[:, off : off + size]
        lam = damping if damping is not None else scale * float((gl**2).sum(1).mean()) / size
        if lam == 0:
            continue
        h_inv = torch.zeros(size, size, dtype=torch.float64)
        for j in range(n):
            h_inv += torch.eye(size, dtype=torch.float64) - torch.outer(gl[j], gl[j]) / (lam + gl[j] @ gl[j])
        h_inv /= n * lam
        raw += vl @ h_inv @ gl.T
        self_train += torch.einsum("jp,pq,jq->j", gl, h_inv, gl)
        self_eval += torch.einsum("ip,pq,iq->i", vl, h_inv, vl)
    return raw.numpy(), (raw / torch.sqrt(self_eval[:, None] * self_train[None, :])).numpy()


@pytest.fixture(scope="module")
def results(tiny_model, checkpoints):
    events: list = []
    cache = GradientCache()
    scores = get_method("datainf").compute(lambda: _load(tiny_model), TRAIN, EVALS, checkpoints, ARGS, events.append,
                                           cache=cache)
    return {s.variant: s for s in scores}, events, cache


def _encoded(tiny_model, generated):
    return encode_examples(_load(tiny_model)[1], TRAIN, EVALS, generated)


def _rel(got, want) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def test_datainf_equals_brute_force_reference(tiny_model, checkpoints, results):
    by_variant, _, _ = results
    train, evals = _encoded(tiny_model, by_variant["raw"].args["generated_answers"])
    g_train, blocks = reference_gradients(tiny_model, checkpoints[-1], train)
    g_eval, _ = reference_gradients(tiny_model, checkpoints[-1], evals)
    want_raw, want_normalized = reference_datainf(g_train, g_eval, blocks)
    assert _rel(by_variant["raw"].scores, want_raw) < 1e-4
    assert _rel(by_variant["normalized"].scores, want_normalized) < 1e-4
    assert by_variant["raw"].args["checkpoint_step"] == 10


def test_fixed_damping_and_chosen_checkpoint(tiny_model, checkpoints):
    args = {**ARGS, "damping": 0.05, "checkpoint_step": 5}
    raw = get_method("datainf").compute(lambda: _load(tiny_model), TRAIN, EVALS[:2], checkpoints, args, lambda e: None)[0]
    train, evals = _encoded(tiny_model, {})
    g_train, blocks = reference_gradients(tiny_model, checkpoints[0], train)
    g_eval, _ = reference_gradients(tiny_model, checkpoints[0], evals[:2])
    want_raw, _ = reference_datainf(g_train, g_eval, blocks, damping=0.05)
    assert _rel(raw.scores, want_raw) < 1e-4
    assert raw.args["damping"] == 0.05 and raw.args["checkpoint_step"] == 5


def test_duplicated_pair_equal_and_identical_question_ranks_first(results):
    by_variant, _, _ = results
    for s in by_variant.values():
        np.testing.assert_allclose(s.scores[:, 1], s.scores[:, 4], rtol=1e-5, atol=1e-9)
    row = by_variant["normalized"].scores[0]
    assert int(np.argmax(row)) == 2
    assert row[2] == pytest.approx(1.0, abs=1e-4)
    assert np.all(np.abs(by_variant["normalized"].scores) <= 1 + 1e-4)


def test_progress_and_stored_arguments(results):
    by_variant, events, _ = results
    assert [e.fraction for e in events] == sorted(e.fraction for e in events)
    assert events[-1].fraction == 1.0
    args = by_variant["raw"].args
    assert args["damping"] is None and args["damping_scale"] == 0.1 and args["batch_size"] == 3
    assert "damping_per_layer" in args and args["layers"] == 8
    assert args["num_lora_parameters"] == 1792 and args["trainable_token_rows"] == 0


def test_gradients_are_reused_across_methods(tiny_model, checkpoints, results):
    """TracIn after DataInf on the same cache takes no new gradient at the final checkpoint."""
    _, _, cache = results
    before = cache.misses, cache.hits
    get_method("tracin").compute(lambda: _load(tiny_model), TRAIN, EVALS, checkpoints, ARGS, lambda e: None,
                                 cache=cache)
    # Final checkpoint: train + eval gradients and the generated answer were hits.
    assert cache.hits - before[1] >= 3
    # The earlier checkpoint's two gradient matrices were new.
    assert cache.misses - before[0] == 2


def test_raw_only_and_bad_arguments(tiny_model, checkpoints):
    method = get_method("datainf")
    only_raw = method.compute(lambda: _load(tiny_model), TRAIN, EVALS[:1], checkpoints, {**ARGS, "normalized": False},
                              lambda e: None)
    assert [s.variant for s in only_raw] == ["raw"]
    for bad in ({"damping": -1}, {"damping": "x"}, {"nope": 1}, {"checkpoint_step": 99}):
        with pytest.raises(ValueError, match="(?i)datainf"):
            method.compute(lambda: _load(tiny_model), TRAIN, EVALS, checkpoints, {**ARGS, **bad}, lambda e: None)


def test_gradients_spilled_to_disk_give_the_same_scores(tiny_model, checkpoints, results):
    """A cache with no RAM budget memory-maps every gradient matrix: same scores."""
    by_variant, _, _ = results
    spilled = get_method("datainf").compute(lambda: _load(tiny_model), TRAIN, EVALS, checkpoints, ARGS,
                                            lambda e: None, cache=GradientCache(ram_bytes=0))
    for s in spilled:
        np.testing.assert_allclose(s.scores, by_variant[s.variant].scores, rtol=1e-5, atol=1e-7)

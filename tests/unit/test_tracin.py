"""TracIn and the per-example LoRA gradients under it, on a tiny random Llama.

The run is faked: three "checkpoints" are the same LoRA adapter with seeded random weights
(lora_B starts at zero, which would make every gradient of lora_A vanish), saved the way the
trainer saves them; the first two also carry an AdamW state (``training_state.pt``) made by
a real optimizer step over the LoRA weights, the third has none. The reference is
deliberately naive: one ``loss.backward()`` per example through the model's own full-logit
loss, an explicit sum of lr * dot products, and for the TrackStar cosine the dense
``P x P`` Gauss-Newton matrix and its inverse square root.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.tiny_lora import EVALS, MAX_LENGTH, TRAIN, encode_examples, reference_gradients
from helpers.tiny_lora import lora_model, randomize_lora, save_checkpoint
from helpers.tiny_lora import one_thread, tiny_model  # noqa: F401  (fixtures)
from helpers.tiny_lora import load as _load
from inflab.ml.chat import encode_pair
from inflab.core.messages import ProgressEvent
from inflab.influence.checkpoints import LocalCheckpoint, attach_adapter
from inflab.influence.gradients import example_gradients, lora_blocks
from inflab.influence.methods import UnknownMethod, get_method

LEARNING_RATES = [1e-3, 6e-4, 2e-4]
# batch_size 3 puts the duplicates t1 and t4 in different micro-batches (different padding).
ARGS = {"batch_size": 3, "max_length": MAX_LENGTH, "max_new_tokens": 6}


@pytest.fixture(scope="module")
def checkpoints(tiny_model: Path, tmp_path_factory) -> list[LocalCheckpoint]:
    model = lora_model(tiny_model)
    root = tmp_path_factory.mktemp("checkpoints")
    out = []
    for k, lr in enumerate(LEARNING_RATES):
        generator = torch.Generator().manual_seed(100 + k)
        randomize_lora(model, generator)
        step = 10 * (k + 1)
        folder = root / str(step)
        out.append(save_checkpoint(model, folder, {"step": step, "epoch": k + 1, "loss": 1.0, "learning_rate": lr}))
        if k < 2:
            # AdamW state as the trainer saves it: its optimizer holds the LoRA weights in the
            # model's parameter order; a few steps with random gradients give uneven moments.
            lora = [p for name, p in model.named_parameters() if "lora_" in name]
            optimizer = torch.optim.AdamW(lora, lr=lr)
            for _ in range(k + 2):
                for p in lora:
                    p.grad = torch.randn(p.shape, generator=generator) * torch.rand(p.shape[1], generator=generator)
                optimizer.step()  # changes the weights in memory only: the adapter is saved
            torch.save({"optimizer": optimizer.state_dict()}, folder / "training_state.pt")
    return out


@pytest.fixture(scope="module")
def results(tiny_model, checkpoints):
    """The default arguments: the ``normalized`` variant is the TrackStar cosine."""
    events: list = []
    # Checkpoints in scrambled order: the method sorts them by step.
    scores = get_method("tracin").compute(
        lambda: _load(tiny_model), TRAIN, EVALS, checkpoints[::-1], ARGS, events.append
    )
    return {s.variant: s for s in scores}, events


@pytest.fixture(scope="module")
def unit_results(tiny_model, checkpoints):
    events: list = []
    scores = get_method("tracin").compute(
        lambda: _load(tiny_model), TRAIN, EVALS, checkpoints, {**ARGS, "normalization": "unit"}, events.append
    )
    return {s.variant: s for s in scores}, events


def _reference_gradients(tiny_model: Path, checkpoint: LocalCheckpoint, examples) -> torch.Tensor:
    return reference_gradients(tiny_model, checkpoint, examples)[0]


def _encode(tiny_model: Path, generated: dict[str, str]):
    return encode_examples(_load(tiny_model)[1], TRAIN, EVALS, generated)


def test_tracin_equals_brute_force_reference(tiny_model, checkpoints, results, unit_results):
    by_variant, _ = unit_results
    raw, normalized = by_variant["raw"], by_variant["normalized"]
    np.testing.assert_array_equal(raw.scores, results[0]["raw"].scores)
    train, evals = _encode(tiny_model, raw.args["generated_answers"])
    expected_raw = np.zeros((len(EVALS), len(TRAIN)))
    expected_normalized = np.zeros_like(expected_raw)
    for checkpoint in checkpoints:
        g_train = _reference_gradients(tiny_model, checkpoint, train)
        g_eval = _reference_gradients(tiny_model, checkpoint, evals)
        assert g_train.norm(dim=1).min() > 0, "the fake checkpoints must give nonzero gradients"
        for i in range(len(evals)):
            for j in range(len(train)):
                dot = float(g_eval[i] @ g_train[j])
                expected_raw[i, j] += checkpoint.learning_rate * dot
                expected_normalized[i, j] += (
                    checkpoint.learning_rate * dot / float(g_eval[i].norm() * g_train[j].norm())
                )
    for got, want in ((raw.scores, expected_raw), (normalized.scores, expected_normalized)):
        assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-4
        assert np.allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def _adam_scaling(tiny_model: Path, checkpoint: LocalCheckpoint, names: list[str]) -> torch.Tensor | None:
    """1 / (sqrt(v / (1 - beta2^t)) + eps) from the saved AdamW state, matched to the LoRA
    weights by name (the optimizer's i-th tensor is the model's i-th LoRA parameter)."""
    path = Path(checkpoint.path) / "training_state.pt"
    if not path.is_file():
        return None
    from peft import PeftModel

    optimizer = torch.load(path, weights_only=True)["optimizer"]
    beta2, eps = optimizer["param_groups"][0]["betas"][1], optimizer["param_groups"][0]["eps"]
    model = PeftModel.from_pretrained(_load(tiny_model)[0], str(checkpoint.path))
    lora_names = [n for n, _ in model.named_parameters() if "lora_" in n]
    by_name = {}
    for i, name in enumerate(lora_names):
        entry = optimizer["state"][i]
        v_hat = entry["exp_avg_sq"].double() / (1 - beta2 ** float(entry["step"]))
        by_name[name] = 1.0 / (v_hat.sqrt() + eps)
    return torch.cat([by_name[n].flatten() for n in names])


def test_trackstar_equals_dense_reference(tiny_model, checkpoints, results):
    """The default ``normalized`` variant against the definition with explicit matrices:
    sum_c lr_c cos(R^-1/2 A^1/2 v, R^-1/2 A^1/2 g), R = G'^T G' / N + lambda I (dense P x P,
    its inverse square root by eigendecomposition), lambda = 0.1 x mean eigenvalue of
    G'^T G' / N, A from AdamW's saved second moments (none for the third checkpoint)."""
    from peft import PeftModel

    normalized = results[0]["normalized"]
    train, evals = _encode(tiny_model, normalized.args["generated_answers"])
    names = [b.name for b in lora_blocks(PeftModel.from_pretrained(_load(tiny_model)[0], str(checkpoints[0].path)))]

    def cosines(g_train: torch.Tensor, g_eval: torch.Tensor) -> np.ndarray:
        n, p = g_train.shape
        gn = g_train.T @ g_train / n
        lam = 0.1 * torch.trace(gn) / n
        w, q = torch.linalg.eigh(gn + lam * torch.eye(p, dtype=torch.float64))
        inv_sqrt = (q / w.sqrt()) @ q.T
        t, e = g_train @ inv_sqrt, g_eval @ inv_sqrt
        return ((e / e.norm(dim=1, keepdim=True)) @ (t / t.norm(dim=1, keepdim=True)).T).numpy()

    expected = np.zeros((len(EVALS), len(TRAIN)))
    without_adam = np.zeros_like(expected)
    for checkpoint in checkpoints:
        g_train = _reference_gradients(tiny_model, checkpoint, train)
        g_eval = _reference_gradients(tiny_model, checkpoint, evals)
        without_adam += checkpoint.learning_rate * cosines(g_train, g_eval)
        scaling = _adam_scaling(tiny_model, checkpoint, names)
        if scaling is not None:
            g_train, g_eval = g_train * scaling.sqrt(), g_eval * scaling.sqrt()
        expected += checkpoint.learning_rate * cosines(g_train, g_eval)
    got = normalized.scores
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 1e-4
    assert np.allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    # The optimizer correction matters here, so the test would catch it being skipped or misplaced.
    assert np.linalg.norm(got - without_adam) / np.linalg.norm(expected) > 1e-2


def test_trackstar_settings_are_recorded(results):
    args = results[0]["normalized"].args
    assert args["normalization"] == "trackstar" and args["damping"] == 0.1 and args["optimizer_correction"] is True
    per = args["normalization_per_checkpoint"]
    assert [c["step"] for c in per] == [10, 20, 30]
    assert [c["optimizer_correction"] for c in per] == ["ok", "ok", "no training_state.pt"]
    assert all(c["gauss_newton_damping"] > 0 for c in per)


def test_shape_ids_and_finite(results):
    by_variant, _ = results
    assert list(by_variant) == ["raw", "normalized"]
    for s in by_variant.values():
        assert s.method == "tracin"
        assert s.scores.shape == (len(EVALS), len(TRAIN))
        assert s.scores.dtype == np.float32
        assert np.isfinite(s.scores).all()
        assert s.eval_ids == [q.id for q in EVALS] and s.train_ids == [p.id for p in TRAIN]
        assert s.args["checkpoint_steps"] == [10, 20, 30]
        assert s.args["learning_rates"] == LEARNING_RATES
        assert list(s.args["generated_answers"]) == ["e2"]


@pytest.mark.parametrize("which", ["results", "unit_results"])
def test_duplicated_training_pair_gets_equal_scores(which, request):
    by_variant, _ = request.getfixturevalue(which)
    for s in by_variant.values():
        np.testing.assert_allclose(s.scores[:, 1], s.scores[:, 4], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("which", ["results", "unit_results"])
def test_eval_question_equal_to_a_training_pair_ranks_it_first(which, request):
    normalized = request.getfixturevalue(which)[0]["normalized"]
    row = normalized.scores[0]
    assert int(np.argmax(row)) == 2
    # Cosine 1 at every checkpoint (in whichever metric): the score is the sum of the rates.
    assert row[2] == pytest.approx(sum(LEARNING_RATES), rel=1e-5)


def test_progress_events(results):
    _, events = results
    assert events and all(e.kind == "progress" for e in events)
    # Typed events of the influence stage, naming the method (the service publishes them
    # under the job's run id).
    assert all(isinstance(e, ProgressEvent) and e.stage == "influence" and e.method == "tracin" for e in events)
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert events[-1].step == events[-1].total
    assert all(e.eta_s is None or e.eta_s >= 0 for e in events)


def test_batched_gradients_match_single_example_backward(tiny_model, checkpoints):
    """Padding, length bucketing and answer-only logits change nothing, including for a pair
    whose answer was truncated away entirely (zero gradient, not NaN)."""
    base, tokenizer = _load(tiny_model)
    model = attach_adapter(base, checkpoints[1])
    examples = [encode_pair(tokenizer, p.question, p.answer, MAX_LENGTH) for p in TRAIN]
    prompt_only = encode_pair(tokenizer, TRAIN[0].question, TRAIN[0].answer, max_length=8)
    assert prompt_only.answer_tokens == 0
    examples.append(prompt_only)
    got = example_gradients(model, examples, pad_id=tokenizer.pad_token_id, batch_size=3).double()
    want = _reference_gradients(tiny_model, checkpoints[1], examples[:-1])
    assert torch.linalg.norm(got[:-1] - want) / torch.linalg.norm(want) < 1e-5
    assert torch.count_nonzero(got[-1]) == 0
    # The checkpoint's adapter is loaded for inference: the flags are left as they were.
    assert not any(p.requires_grad for p in model.parameters())


def test_swapping_adapters_matches_a_fresh_load(tiny_model, checkpoints):
    base, tokenizer = _load(tiny_model)
    model = attach_adapter(base, checkpoints[0])
    model = attach_adapter(model, checkpoints[2])
    fresh = attach_adapter(_load(tiny_model)[0], checkpoints[2])
    example = [encode_pair(tokenizer, TRAIN[0].question, TRAIN[0].answer, MAX_LENGTH)]
    a = example_gradients(model, example, pad_id=tokenizer.pad_token_id)
    b = example_gradients(fresh, example, pad_id=tokenizer.pad_token_id)
    torch.testing.assert_close(a, b)


def test_unknown_method_and_arguments(tiny_model, checkpoints):
    with pytest.raises(UnknownMethod):
        get_method("nope")
    with pytest.raises(ValueError, match="bogus\n  Extra inputs are not permitted"):
        get_method("tracin").compute(lambda: _load(tiny_model), TRAIN, EVALS, checkpoints, {"bogus": 1}, print)


def test_normalization_arguments_are_checked():
    from inflab.influence.methods.tracin import TracInArgs

    assert TracInArgs.model_validate({}).normalization == "trackstar"
    assert TracInArgs.model_validate({"normalization": "unit", "optimizer_correction": False}).optimizer_correction is False
    with pytest.raises(ValueError, match="normalization\n  Input should be 'trackstar' or 'unit'"):
        TracInArgs.model_validate({"normalization": "cosine"})
    with pytest.raises(ValueError, match="damping\n  Input should be greater than 0"):
        TracInArgs.model_validate({"damping": 0})


def test_trackstar_scores_on_explicit_matrices_with_a_zero_gradient():
    """The Gram-matrix (Woodbury) form against R^-1/2 taken explicitly, more training rows
    than chunk rows would hold in one piece, and a zero training row (an answer truncated
    away) scoring 0 instead of NaN."""
    from inflab.influence.gradcache import GradientMatrix
    from inflab.influence.methods.tracin import trackstar_scores

    generator = torch.Generator().manual_seed(7)
    n, m, p = 9, 3, 40
    g = torch.randn(n, p, generator=generator) * torch.rand(n, 1, generator=generator)
    g[4] = 0.0
    v = torch.randn(m, p, generator=generator)
    a = torch.rand(p, generator=generator) + 0.1

    class SmallChunks(GradientMatrix):  # several chunks, so the upper-triangle walk is exercised
        def chunks(self, rows: int = 4, start_row: int = 0):
            return super().chunks(rows, start_row)

    matrix = SmallChunks(n, p)
    matrix.write(list(range(n)), g)
    got, dots, lam = trackstar_scores(v, matrix, damping=0.3, precondition=a)
    gd, vd = g.double() * a.double().sqrt(), v.double() * a.double().sqrt()
    gn = gd.T @ gd / n
    want_lam = 0.3 * float(torch.trace(gn)) / n
    w, q = torch.linalg.eigh(gn + want_lam * torch.eye(p, dtype=torch.float64))
    inv_sqrt = (q / w.sqrt()) @ q.T
    t, e = gd @ inv_sqrt, vd @ inv_sqrt
    want = (e / e.norm(dim=1, keepdim=True)) @ (t / t.norm(dim=1, keepdim=True).clamp(min=1e-300)).T
    want[:, 4] = 0.0
    assert lam == pytest.approx(want_lam, rel=1e-6)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dots, (v.double() @ g.double().T).numpy(), rtol=1e-5, atol=1e-5)
    assert np.all(np.isfinite(got)) and np.all(got[:, 4] == 0)

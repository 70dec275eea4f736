"""A benchmark run's trained function-token rows in the gradient methods, on a tiny random
Llama with tied embeddings (like the default model).

The checkpoints are made the way the trainer makes a benchmark run's: the function tokens
added as special tokens, LoRA on q/v plus the tokens' embedding rows (peft's
``trainable_token_indices``), saved with ``save_embedding_layers=False``, with an AdamW
state over every trained weight in the model's order. Weights are seeded random. The
reference is one ``loss.backward()`` per example through the model's own full-logit loss,
whose ``.grad`` of the token rows holds both their use as inputs and as tied output rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.tiny_lora import DOCUMENTS, MAX_LENGTH, QUERIES, load_with_tokens, randomize_lora, randomize_tokens
from helpers.tiny_lora import reference_gradients, save_checkpoint, token_lora_model
from helpers.tiny_lora import one_thread, tiny_model  # noqa: F401  (fixtures)
from inflab.ml.chat import encode_document, encode_query
from inflab.influence.checkpoints import LocalCheckpoint, attach_adapter
from inflab.influence.gradcache import GradientMatrix
from inflab.influence.gradients import TokenBlock, example_gradients, gradient_blocks, lora_blocks
from inflab.influence.methods import get_method
from inflab.influence.methods.datainf import datainf_scores

LEARNING_RATES = [1e-3, 5e-4]
ARGS = {"batch_size": 3, "max_length": MAX_LENGTH, "max_new_tokens": 6, "benchmark": True}


@pytest.fixture(scope="module")
def checkpoints(tiny_model: Path, tmp_path_factory) -> list[LocalCheckpoint]:
    model = token_lora_model(tiny_model)
    root = tmp_path_factory.mktemp("token-checkpoints")
    out = []
    for k, lr in enumerate(LEARNING_RATES):
        generator = torch.Generator().manual_seed(400 + k)
        randomize_lora(model, generator)
        randomize_tokens(model, generator)
        folder = root / str(k)
        meta = {"step": 4 * (k + 1), "epoch": k + 1, "learning_rate": lr}
        out.append(save_checkpoint(model, folder, meta, save_embedding_layers=False))
        # The trainer's optimizer: every trained weight in the model's order (the token rows first).
        trained = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trained, lr=lr)
        for _ in range(k + 2):
            for p in trained:
                p.grad = torch.randn(p.shape, generator=generator) * torch.rand(p.shape[-1], generator=generator)
            optimizer.step()  # changes the weights in memory only: the adapter is saved
        torch.save({"optimizer": optimizer.state_dict()}, folder / "training_state.pt")
    return out


def _examples(tiny_model: Path):
    tokenizer = load_with_tokens(tiny_model)[1]
    return ([encode_document(tokenizer, d.answer, MAX_LENGTH) for d in DOCUMENTS],
            [encode_query(tokenizer, q.question, q.answer, MAX_LENGTH) for q in QUERIES])


def _reference(tiny_model: Path, checkpoint: LocalCheckpoint, examples):
    return reference_gradients(tiny_model, checkpoint, examples, loader=load_with_tokens)


def _rel(got, want) -> float:
    return float(np.linalg.norm(np.asarray(got) - np.asarray(want)) / np.linalg.norm(np.asarray(want)))


def test_gradient_rows_hold_the_token_rows_and_match_backward(tiny_model, checkpoints):
    base, tokenizer = load_with_tokens(tiny_model)
    model = attach_adapter(base, checkpoints[0])
    blocks = gradient_blocks(model)
    tokens = blocks[-1]
    assert isinstance(tokens, TokenBlock) and blocks[:-1] == lora_blocks(model)
    assert tokens.token_ids == (384, 385) and tokens.shape == (2, 64) and len(tokens.tied) == 1
    train, evals = _examples(tiny_model)
    examples = [*train, *evals]
    got = example_gradients(model, examples, pad_id=tokenizer.pad_token_id, batch_size=3).double()
    want, layout = _reference(tiny_model, checkpoints[0], examples)
    assert got.shape == want.shape == (len(examples), tokens.offset + tokens.numel)
    assert layout[-1] == (tokens.offset, tokens.numel)
    assert torch.linalg.norm(got - want) / torch.linalg.norm(want) < 1e-5
    rows = slice(tokens.offset, None)
    assert torch.linalg.norm(got[:, rows] - want[:, rows]) / torch.linalg.norm(want[:, rows]) < 1e-5
    assert want[:, rows].norm() > 0.1 * want.norm()  # the token rows are a real part of the row
    assert not any(p.requires_grad for p in model.parameters())  # flags restored


def _adam_scaling(tiny_model: Path, checkpoint: LocalCheckpoint, names: list[str]) -> torch.Tensor:
    """1 / (sqrt(v_hat) + eps) from the saved AdamW state, matched by name: the optimizer's
    i-th tensor is the i-th trainable parameter of the trainable model."""
    from peft import PeftModel

    optimizer = torch.load(Path(checkpoint.path) / "training_state.pt", weights_only=True)["optimizer"]
    beta2, eps = optimizer["param_groups"][0]["betas"][1], optimizer["param_groups"][0]["eps"]
    model = PeftModel.from_pretrained(load_with_tokens(tiny_model)[0], str(checkpoint.path), is_trainable=True)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(trained) == len(optimizer["state"])
    by_name = {}
    for i, name in enumerate(trained):
        entry = optimizer["state"][i]
        by_name[name] = 1.0 / ((entry["exp_avg_sq"].double() / (1 - beta2 ** float(entry["step"]))).sqrt() + eps)
    return torch.cat([by_name[n].flatten() for n in names])


def _trackstar(g_train: torch.Tensor, g_eval: torch.Tensor) -> np.ndarray:
    """Cosines of R^-1/2 g, R = G^T G / N + 0.1 x its mean eigenvalue, with dense matrices."""
    n, p = g_train.shape
    gn = g_train.T @ g_train / n
    w, q = torch.linalg.eigh(gn + 0.1 * torch.trace(gn) / n * torch.eye(p, dtype=torch.float64))
    inv_sqrt = (q / w.sqrt()) @ q.T
    t, e = g_train @ inv_sqrt, g_eval @ inv_sqrt
    return ((e / e.norm(dim=1, keepdim=True)) @ (t / t.norm(dim=1, keepdim=True)).T).numpy()


def test_tracin_counts_the_token_rows(tiny_model, checkpoints):
    """Both variants against the brute-force gradients (raw: lr-weighted dot products;
    normalized: TrackStar's cosine with Adam's scaling of every trained weight, the token
    rows' included), and far from what the LoRA weights alone give."""
    scores = get_method("tracin").compute(lambda: load_with_tokens(tiny_model), DOCUMENTS, QUERIES, checkpoints,
                                          ARGS, lambda e: None)
    by_variant = {s.variant: s for s in scores}
    train, evals = _examples(tiny_model)
    names = [b.name for b in gradient_blocks(attach_adapter(load_with_tokens(tiny_model)[0], checkpoints[0]))]
    raw, lora_raw = np.zeros((len(QUERIES), len(DOCUMENTS))), np.zeros((len(QUERIES), len(DOCUMENTS)))
    normalized, lora_normalized = np.zeros_like(raw), np.zeros_like(raw)
    for checkpoint in checkpoints:
        g_train, layout = _reference(tiny_model, checkpoint, train)
        g_eval, _ = _reference(tiny_model, checkpoint, evals)
        lora = layout[-1][0]  # the token rows start here
        lr = checkpoint.learning_rate
        raw += lr * (g_eval @ g_train.T).numpy()
        lora_raw += lr * (g_eval[:, :lora] @ g_train[:, :lora].T).numpy()
        scale = _adam_scaling(tiny_model, checkpoint, names).sqrt()
        normalized += lr * _trackstar(g_train * scale, g_eval * scale)
        lora_normalized += lr * _trackstar(g_train[:, :lora] * scale[:lora], g_eval[:, :lora] * scale[:lora])
    assert _rel(by_variant["raw"].scores, raw) < 1e-4
    assert _rel(by_variant["normalized"].scores, normalized) < 1e-4
    assert _rel(by_variant["raw"].scores, lora_raw) > 1e-2
    assert _rel(by_variant["normalized"].scores, lora_normalized) > 1e-2
    args = by_variant["raw"].args
    assert args["trainable_token_rows"] == 2 and args["trainable_token_parameters"] == 128
    assert args["num_lora_parameters"] == lora
    assert [c["optimizer_correction"] for c in args["normalization_per_checkpoint"]] == ["ok", "ok"]


def test_datainf_has_the_token_rows_as_one_more_layer(tiny_model, checkpoints):
    scores = get_method("datainf").compute(lambda: load_with_tokens(tiny_model), DOCUMENTS, QUERIES, checkpoints,
                                           ARGS, lambda e: None)
    by_variant = {s.variant: s for s in scores}
    train, evals = _examples(tiny_model)
    g_train, layout = _reference(tiny_model, checkpoints[-1], train)
    g_eval, _ = _reference(tiny_model, checkpoints[-1], evals)
    matrix = GradientMatrix(*g_train.shape)
    matrix.write(list(range(len(train))), g_train.float())
    want_raw, want_normalized, _ = datainf_scores(g_eval.float(), matrix, layout)
    lora_raw, lora_normalized, _ = datainf_scores(g_eval.float(), matrix, layout[:-1])
    assert _rel(by_variant["raw"].scores, want_raw) < 1e-4
    assert _rel(by_variant["normalized"].scores, want_normalized) < 1e-4
    assert _rel(by_variant["raw"].scores, lora_raw) > 1e-2
    assert _rel(by_variant["normalized"].scores, lora_normalized) > 1e-2
    args = by_variant["raw"].args
    assert args["layers"] == 9 and args["trainable_token_rows"] == 2 and args["trainable_token_parameters"] == 128


def test_ekfac_keeps_to_the_lora_weights_and_says_so(tiny_model, checkpoints):
    pytest.importorskip("kronfluence")
    scores = get_method("ekfac").compute(lambda: load_with_tokens(tiny_model), DOCUMENTS, QUERIES, checkpoints,
                                         {**ARGS, "use_empirical_fisher": True}, lambda e: None)
    for s in scores:
        assert np.isfinite(s.scores).all()
        assert s.args["trainable_token_rows"] == 0 and s.args["trainable_token_rows_left_out"] == 2
        assert s.args["tracked_modules"] == 8

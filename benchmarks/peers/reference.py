"""The lower bound and the brute-force references of the influence benchmark.

* :func:`floor`: one plain forward+backward (mean answer-token loss, ``loss.backward()``)
  over every training and evaluation example per checkpoint, in length-bucketed
  micro-batches: the least any gradient-based method must spend.
* :func:`per_example_tracin`: TracIn with one backward per example (the obvious loop,
  and the exact reference for our batched per-example gradients).
* :func:`datainf_reference`: DataInf written out from the paper's formula on explicit
  per-example gradients, the reference our DataInf is compared against.

Every function takes the model (a peft model, or the base model to wrap), the encoded
examples and the checkpoints, and returns plain numpy matrices ``[M eval, N train]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from inflab.ml.chat import answer_loss, collate
from inflab.influence.checkpoints import LocalCheckpoint, attach_adapter
from inflab.influence.gradients import length_buckets, lora_blocks


def _lora_params_only(model: Any) -> list[torch.nn.Parameter]:
    blocks = lora_blocks(model)
    wanted = {id(b.module.weight) for b in blocks}
    for p in model.parameters():
        p.requires_grad_(id(p) in wanted)
    return [b.module.weight for b in blocks]


def floor(model: Any, train: Sequence[Any], evals: Sequence[Any], checkpoints: Sequence[LocalCheckpoint],
          *, pad_id: int, batch_size: int = 8) -> dict[str, Any]:
    """Plain forward+backward over ``train`` and ``evals`` at each checkpoint."""
    per_checkpoint = []
    import time

    for ckpt in checkpoints:
        started = time.perf_counter()
        model = attach_adapter(model, ckpt)
        params = _lora_params_only(model)
        for examples in (train, evals):
            for idx in length_buckets(examples, batch_size):
                loss = answer_loss(model, collate([examples[i] for i in idx], pad_id))
                loss.backward()
                for p in params:
                    p.grad = None
        per_checkpoint.append(time.perf_counter() - started)
    return {"per_checkpoint_s": per_checkpoint}


def forward_only(model: Any, train: Sequence[Any], evals: Sequence[Any], checkpoint: LocalCheckpoint,
                 *, pad_id: int, batch_size: int = 8) -> dict[str, Any]:
    """One plain forward (no graph) over ``train`` and ``evals`` at ``checkpoint``: the unit
    the representation methods' cost is counted in (``delta_h`` runs two of them, one per
    model; the gradient lower bound is one of them plus an activation backward)."""
    import time

    started = time.perf_counter()
    model = attach_adapter(model, checkpoint)
    with torch.no_grad():
        for examples in (train, evals):
            for idx in length_buckets(examples, batch_size):
                answer_loss(model, collate([examples[i] for i in idx], pad_id))
    return {"per_checkpoint_s": [time.perf_counter() - started]}


def per_example_gradients(model: Any, examples: Sequence[Any], *, pad_id: int) -> torch.Tensor:
    """``[len(examples), P]``: one ``autograd.grad`` per example (same layout as
    :func:`inflab.influence.gradients.example_gradients`)."""
    params = _lora_params_only(model)
    rows = []
    for ex in examples:
        loss = answer_loss(model, collate([ex], pad_id))
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        rows.append(torch.cat([
            (g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)
        ]))
    return torch.stack(rows).float()


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)


def per_example_tracin(model: Any, train: Sequence[Any], evals: Sequence[Any],
                       checkpoints: Sequence[LocalCheckpoint], *, pad_id: int,
                       keep_final: bool = False) -> dict[str, Any]:
    """TracIn (raw and normalised) from one backward per example; with ``keep_final`` the
    final checkpoint's gradients are returned too (for the DataInf reference)."""
    raw = np.zeros((len(evals), len(train)))
    normalized = np.zeros_like(raw)
    out: dict[str, Any] = {}
    for number, ckpt in enumerate(checkpoints):
        model = attach_adapter(model, ckpt)
        g_train = per_example_gradients(model, train, pad_id=pad_id)
        g_eval = per_example_gradients(model, evals, pad_id=pad_id)
        raw += ckpt.learning_rate * (g_eval @ g_train.T).double().numpy()
        normalized += ckpt.learning_rate * (_unit(g_eval) @ _unit(g_train).T).double().numpy()
        if keep_final and number == len(checkpoints) - 1:
            out["final_train_grads"], out["final_eval_grads"] = g_train, g_eval
            out["block_sizes"] = [b.numel for b in lora_blocks(model)]
    out["raw"], out["normalized"] = raw, normalized
    return out


def datainf_reference(g_train: torch.Tensor, g_eval: torch.Tensor, block_sizes: Sequence[int],
                      *, damping_scale: float = 0.1, damping: float | None = None) -> np.ndarray:
    """DataInf (Kwon et al., 2024, eq. 5), block by block (each LoRA weight matrix is a
    layer, as in the paper's code), explicit and slow on purpose:

        H_l^{-1} v_l ~= 1/(n lambda_l) * sum_i [ v_l - (g_il . v_l) / (lambda_l + |g_il|^2) g_il ]
        score(train j, eval) = sum_l  g_jl . H_l^{-1} v_l       (positive = helpful)

    with ``lambda_l = damping`` when given, else ``damping_scale * mean_i mean(g_il^2)``: the
    paper's code (``lambda_const_param=10``), 0.1 x the mean squared gradient entry of the
    layer over the training examples."""
    g_train = g_train.double()
    g_eval = g_eval.double()
    n = g_train.shape[0]
    scores = torch.zeros(g_eval.shape[0], n, dtype=torch.float64)
    offset = 0
    for size in block_sizes:
        G = g_train[:, offset : offset + size]  # [N, p]
        V = g_eval[:, offset : offset + size]  # [M, p]
        offset += size
        sq = (G * G).sum(dim=1)  # [N]
        lam = float(damping) if damping is not None else damping_scale * float(sq.mean()) / size
        if lam <= 0:
            continue
        for m in range(V.shape[0]):
            v = V[m]
            acc = torch.zeros_like(v)
            for i in range(n):
                acc += v - (G[i] @ v) / (lam + sq[i]) * G[i]
            hinv_v = acc / (n * lam)
            scores[m] += G @ hinv_v
    return scores.numpy()


def datainf_reference_normalized(g_train: torch.Tensor, g_eval: torch.Tensor, block_sizes: Sequence[int],
                                 **kwargs: Any) -> np.ndarray:
    """The same on unit-normalised gradients (each example's whole gradient scaled to length 1)."""
    return datainf_reference(_unit(g_train.double()), _unit(g_eval.double()), block_sizes, **kwargs)

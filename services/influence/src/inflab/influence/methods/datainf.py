"""DataInf (Kwon, Wu, Wu and Zou, ICLR 2024): influence with a closed-form, per-layer
approximation of the inverse Hessian over LoRA gradients.

For each LoRA factor ``l`` (every ``lora_A`` / ``lora_B`` weight is one "layer", as in the
authors' code; a benchmark run's trained function-token embedding rows are one more), with
``g_jl`` the gradient of training pair ``j``'s loss restricted to that factor and ``n`` the
number of training pairs, the damped Hessian is replaced by the mean of rank-one terms and
each term is inverted exactly (Sherman-Morrison), which swaps the order of inversion and
averaging:

    (G_l + lambda_l I)^-1  ~=  1/(n lambda_l) * sum_j ( I - g_jl g_jl^T / (lambda_l + ||g_jl||^2) )

so for an evaluation question's gradient ``v_l``

    r_l = (1/lambda_l) * ( v_l - (1/n) sum_j  (g_jl . v_l) / (lambda_l + ||g_jl||^2) * g_jl )

and the influence of training pair ``k`` is ``sum_l r_l . g_kl``. The paper's influence is
the *negative* of this (the change of the evaluation loss when ``k`` is up-weighted); here,
as for TracIn, a positive score means the pair helped the model towards that answer.

Damping: the paper's default ``lambda_l = 0.1 * (n d_l)^-1 * sum_j ||g_jl||^2`` (``d_l`` the
factor's size), i.e. ``damping_scale`` times the mean squared gradient entry of the layer;
or one fixed ``damping`` for every layer. Either is usually far below ``||g_jl||^2`` (the
mean squared entry times the factor's size), so each rank-one term shrinks a training
direction by at most ``1/n``: the approximate inverse is close to ``I / lambda_l`` and the
scores rank much like plain gradient dot products at this checkpoint. The damping then
mostly weights the layers against each other (``1/lambda_l``): the per-layer default
gives a layer with small gradients as much say as one with large ones, a fixed damping
weights layers by their gradients' size.

Variants:
* ``raw``: the score above.
* ``normalized``: the score divided by ``sqrt(r(v).v * r(g_k).g_k)``: a cosine in the metric
  of the approximate inverse Hessian (RelatIF-style, two-sided). The approximation is
  symmetric positive definite, so an evaluation question identical to a training pair
  scores exactly 1 with it, the maximum; large-gradient pairs no longer dominate.

It runs on one checkpoint, the final one unless ``checkpoint_step`` names another. Note
that memorised pairs have small gradients at the final checkpoint, so a
final-checkpoint method loses track of them; TracIn over all checkpoints does not.

Cost: one forward+backward per example (the gradients, shared with TracIn through the
gradient cache), then three passes over the training gradients in row chunks (per-layer
dot products and norms; the preconditioned evaluation gradients; the scores) and, for the
normalised variant, the per-layer Gram matrix of the training gradients (``N^2 P``,
chunk by chunk). Nothing of size ``N x P`` is held beyond what the cache holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from inflab.core.messages import EvalQuestion, TrainingPair
from inflab.core.vocabulary import VARIANTS
from inflab.influence.checkpoints import LocalCheckpoint
from inflab.influence.gradcache import GradientMatrix
from inflab.influence.gradients import coverage, gradient_blocks
from inflab.influence.methods.base import Job, stage
from inflab.influence.methods.prepare import GradientMethod, Prepared, checkpoint_name


def datainf_scores(
    eval_grads: torch.Tensor,
    train_grads: GradientMatrix,
    blocks: Sequence[tuple[int, int]],
    *,
    damping: float | None = None,
    damping_scale: float = 0.1,
    normalized: bool = True,
) -> tuple[np.ndarray, np.ndarray | None, list[float]]:
    """DataInf scores ``[M, N]`` (and the normalised ones) from per-example gradients;
    ``blocks`` are ``(offset, size)`` of each layer in a gradient row. Returns
    ``(raw, normalized or None, per-layer damping)``."""
    m, n = eval_grads.shape[0], train_grads.shape[0]
    layers = len(blocks)
    v = eval_grads.float()
    sq = torch.zeros(n, layers, dtype=torch.float64)  # ||g_jl||^2
    dots = torch.zeros(m, n, layers, dtype=torch.float64)  # v_il . g_jl
    for rows, g in train_grads.chunks():
        for l, (off, size) in enumerate(blocks):
            gb = g[:, off : off + size]
            sq[rows, l] = (gb * gb).sum(1, dtype=torch.float64)
            dots[:, rows, l] = (v[:, off : off + size] @ gb.T).double()

    sizes = torch.tensor([size for _, size in blocks], dtype=torch.float64)
    if damping is not None:
        lam = torch.full((layers,), float(damping), dtype=torch.float64)
    else:
        lam = damping_scale * sq.mean(0) / sizes
        # A layer whose gradients are all zero (e.g. lora_A while lora_B is still zero)
        # contributes nothing; any positive damping keeps the algebra finite.
        lam = torch.where(lam > 0, lam, torch.ones_like(lam))
    coef = dots / (lam + sq)  # [M, N, L]: (g_jl . v_il) / (lambda_l + ||g_jl||^2)

    # r_il = (v_il - (1/n) sum_j coef_ijl g_jl) / lambda_l, accumulated layer by layer.
    acc = torch.zeros_like(v, dtype=torch.float64)
    for rows, g in train_grads.chunks():
        for l, (off, size) in enumerate(blocks):
            acc[:, off : off + size] += (coef[:, rows, l].float() @ g[:, off : off + size]).double()
    for l, (off, size) in enumerate(blocks):  # in place: acc becomes r
        acc[:, off : off + size] = (v[:, off : off + size].double() - acc[:, off : off + size] / n) / lam[l]
    r32 = acc.float()
    del acc
    raw = np.zeros((m, n), dtype=np.float64)
    for rows, g in train_grads.chunks():
        raw[:, rows] = (r32 @ g.T).double().numpy()
    if not normalized:
        return raw, None, lam.tolist()

    # Self-influence of each evaluation question: r(v_i) . v_i
    #   = sum_l (1/lambda_l) (||v_il||^2 - (1/n) sum_j dots_ijl^2 / (lambda_l + ||g_jl||^2)).
    v_sq = torch.stack([(v[:, o : o + s].double() ** 2).sum(1) for o, s in blocks], dim=1)  # [M, L]
    eval_self = ((v_sq - (dots * coef).sum(1) / n) / lam).sum(1)
    # ... and of each training pair, which needs the per-layer Gram matrix g_jl . g_kl.
    train_self = (sq / lam).sum(1)
    for rows_a, ga in train_grads.chunks():
        for rows_b, gb in train_grads.chunks():
            for l, (off, size) in enumerate(blocks):
                gram = (ga[:, off : off + size] @ gb[:, off : off + size].T).double()  # [a, b]
                weight = 1.0 / (n * lam[l] * (lam[l] + sq[rows_b, l]))
                train_self[rows_a] -= (gram * gram * weight).sum(1)
    denom = torch.sqrt(eval_self.clamp(min=1e-30)[:, None] * train_self.clamp(min=1e-30)[None, :]).numpy()
    return raw, raw / denom, lam.tolist()


class DataInf(GradientMethod):
    name = "datainf"
    variants = VARIANTS
    one_checkpoint = True

    def units(self, opts: Any, train: Sequence[TrainingPair], evals: Sequence[EvalQuestion],
              checkpoints: Sequence[LocalCheckpoint]) -> int:
        return len(train) + len(evals) + 1

    def scores(self, job: Job, prep: Prepared) -> tuple[dict[str, Any], dict[str, Any]]:
        opts, progress, cache = job.opts, job.progress, job.cache
        chosen = job.checkpoint
        eval_grads = prep.gradients(chosen, "eval", opts, cache,
                                    lambda k: progress.advance("evaluation-question gradients", k)).tensor()
        train_grads = prep.gradients(chosen, "train", opts, cache,
                                     lambda k: progress.advance("training-pair gradients", k))
        with stage(f"computing DataInf scores at {checkpoint_name(chosen)}"):
            trained = gradient_blocks(prep.attach(chosen))
            blocks = [(b.offset, b.numel) for b in trained]
            raw, normalized, lam = datainf_scores(
                eval_grads, train_grads, blocks, damping=opts.damping, damping_scale=opts.damping_scale,
                normalized=opts.normalized,
            )
        progress.advance("scores")
        return {"raw": raw, "normalized": normalized}, {
            "checkpoint_step": chosen.step,
            **coverage(trained),
            "layers": len(blocks),
            "damping_per_layer": {"min": min(lam), "median": float(np.median(lam)), "max": max(lam)},
            "normalization": "cosine in the DataInf inverse-Hessian metric (RelatIF-style, two-sided)",
        }


#: The argument model: the contract's ``DataInfArgs`` with the run's limits.
DataInfArgs = DataInf.Args

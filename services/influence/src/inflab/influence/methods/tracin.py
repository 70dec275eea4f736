"""TracIn over the run's saved checkpoints (Pruthi et al., 2020, "TracInCP").

    influence(training pair j, evaluation question i)
        = sum over checkpoints c of  learning_rate_c * < grad L_eval_i(c), grad L_train_j(c) >

with gradients taken over the trained weights: the LoRA weights and, on a benchmark run, the
function tokens' embedding rows. A positive score means a gradient step on the training pair
lowered the evaluation question's loss, at least to first order.

Two variants come from the same gradients:

* ``raw``: the definition above. Its scores are dominated by a few training pairs with
  large gradients (the same few head most questions' top lists).
* ``normalized``: at each checkpoint a cosine between the evaluation question's and the
  training pair's gradient, learning-rate-weighted and summed over checkpoints like ``raw``,
  so a pair ranks high because its gradient points the same way, not because it is large.
  Which cosine is the ``normalization`` argument:

  - ``trackstar`` (default; Chang et al. 2024, "Scalable Influence and Fact Tracing for
    Large Language Model Pretraining"): the cosine after the optimizer correction and a
    damped Gauss-Newton preconditioner, i.e. of ``R^-1/2 A^1/2 g``. ``A`` is Adam's own
    per-parameter step scaling ``1/(sqrt(v_hat)+eps)`` read from the optimizer state saved
    with the checkpoint (skipped, and recorded, when the checkpoint has none), and
    ``R = G^T G / N + lambda I`` the Gauss-Newton (empirical Fisher) matrix of the N
    (corrected) training gradients ``G`` at that checkpoint, damped by ``lambda = damping x``
    its mean eigenvalue (``mean ||g||^2 / N``). Directions shared by many training pairs
    (the answer format, the end-of-turn token) are scaled down, so what remains is what
    tells the pairs apart. Computed exactly (no random projection) from Gram matrices by
    the Woodbury identity, with ``M = (N lambda I + G G^T)^-1``:
    ``v . R^-1 g_j = N (V G^T M)_j``, ``g_j . R^-1 g_j = N (1 - N lambda M_jj)``,
    ``v . R^-1 v = (|v|^2 - (V G^T M G V^T)) / lambda``; cost: the training Gram matrix,
    ``N^2 P`` per checkpoint, chunk by chunk.
  - ``unit``: the plain cosine of the raw gradients (TrackStar's unit normalisation alone).

  ``trackstar`` is the default because it ranked the related pairs higher than ``unit``
  in ``benchmarks/influence_normalisation.py`` (figures in docs/measurements.md); BM25
  stays far ahead of both: topical relatedness is a retrieval notion, and TrackStar's
  authors also found BM25 ahead on fact retrieval.
  Memorised pairs have small gradients late in training; both cosines keep finding them
  where final-checkpoint methods lost them.

Which answer an evaluation question's loss is taken on: see ``prepare``. Training and
evaluation gradients come from the job's gradient cache when another method (DataInf at the
final checkpoint) already took them, and the training gradients are consumed in row chunks,
so memory is bounded whatever the number of training pairs.
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
from inflab.influence.methods.prepare import (
    GradientMethod,
    Prepared,
    adam_preconditioner,
    checkpoint_name,
    greedy_answer,
    unit_rows,
)


def trackstar_scores(
    eval_grads: torch.Tensor,
    train_grads: GradientMatrix,
    *,
    damping: float = 0.1,
    precondition: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """At one checkpoint: the cosines ``[M, N]`` of ``R^-1/2 A^1/2 v_i`` and
    ``R^-1/2 A^1/2 g_j`` (see the module docstring; ``precondition`` is ``A``'s diagonal, or
    None for ``A = I``), the plain dot products ``v_i . g_j`` (``raw``'s term, from the same
    pass over the training gradients) and lambda."""
    m, n = eval_grads.shape[0], train_grads.shape[0]
    v = eval_grads.float()
    vp = v if precondition is None else v * precondition  # A v: every product below is in A's metric
    dots = np.zeros((m, n), dtype=np.float64)  # v_i . g_j
    cross = torch.zeros(m, n, dtype=torch.float64)  # v_i . A g_j
    gram = torch.zeros(n, n, dtype=torch.float64)  # g_j . A g_k
    for rows_a, ga in train_grads.chunks():
        dots[:, rows_a] = (v @ ga.T).double().numpy()
        cross[:, rows_a] = torch.from_numpy(dots[:, rows_a]) if precondition is None else (vp @ ga.T).double()
        gpa = ga if precondition is None else ga * precondition
        for rows_b, gb in train_grads.chunks(start_row=rows_a.start):  # the upper triangle
            block = (gpa @ gb.T).double()
            gram[rows_a, rows_b] = block
            gram[rows_b, rows_a] = block.T
    eval_sq = (v.double() * vp.double()).sum(1)  # v_i . A v_i
    self_sq = torch.diagonal(gram)
    mean_eig = float(self_sq.mean()) / n  # trace(G^T A G / n) / n
    lam = damping * mean_eig if mean_eig > 0 else 1.0  # all-zero gradients: any lambda > 0 will do
    # M = (n lam I + G A G^T)^-1 through a Cholesky factor (symmetric positive definite).
    factor = torch.linalg.cholesky(gram + n * lam * torch.eye(n, dtype=torch.float64))
    cross_m = torch.cholesky_solve(cross.T.contiguous(), factor).T  # V A G^T M, [m, n]
    m_diag = torch.diagonal(torch.cholesky_inverse(factor))
    numerator = n * cross_m  # v_i . R^-1 g_j
    train_self = n * (1.0 - n * lam * m_diag)  # g_j . R^-1 g_j
    eval_self = (eval_sq - (cross_m * cross).sum(1)) / lam  # v_i . R^-1 v_i
    scores = numerator / torch.sqrt(eval_self.clamp(min=1e-300)[:, None] * train_self.clamp(min=1e-300)[None, :])
    # A zero gradient (an answer truncated away) scores 0 rather than 0/0.
    scores[:, self_sq <= 0] = 0.0
    scores[eval_sq <= 0, :] = 0.0
    return scores.numpy(), dots, lam


class TracIn(GradientMethod):
    name = "tracin"
    variants = VARIANTS

    def units(self, opts: Any, train: Sequence[TrainingPair], evals: Sequence[EvalQuestion],
              checkpoints: Sequence[LocalCheckpoint]) -> int:
        return len(checkpoints) * (len(train) + len(evals))

    def scores(self, job: Job, prep: Prepared) -> tuple[dict[str, Any], dict[str, Any]]:
        opts, progress, cache = job.opts, job.progress, job.cache
        raw = np.zeros((len(job.evals), len(job.train)), dtype=np.float64)
        normalized = np.zeros_like(raw)
        per_checkpoint: list[dict[str, Any]] = []
        for number, checkpoint in enumerate(prep.checkpoints, start=1):
            where = f"checkpoint {number}/{len(prep.checkpoints)} (step {checkpoint.step})"
            lr = checkpoint.learning_rate
            eval_grads = prep.gradients(
                checkpoint, "eval", opts, cache,
                lambda n: progress.advance(f"{where}: evaluation-question gradients", n),
            ).tensor()
            train_grads = prep.gradients(
                checkpoint, "train", opts, cache,
                lambda n: progress.advance(f"{where}: training-pair gradients", n),
            )
            with stage(f"computing scores at {checkpoint_name(checkpoint)}"):
                if opts.normalization == "unit":
                    eval_units = unit_rows(eval_grads)
                    for rows, grads in train_grads.chunks():
                        raw[:, rows] += lr * (eval_grads @ grads.T).double().numpy()
                        normalized[:, rows] += lr * (eval_units @ unit_rows(grads).T).double().numpy()
                    continue
                precondition, why = None, "off"
                if opts.optimizer_correction:
                    precondition, why = adam_preconditioner(checkpoint, prep.model)
                cosines, dots, lam = trackstar_scores(eval_grads, train_grads, damping=opts.damping,
                                                      precondition=precondition)
                raw += lr * dots
                normalized += lr * cosines
                per_checkpoint.append({"step": checkpoint.step, "optimizer_correction": why,
                                       "gauss_newton_damping": lam})

        info: dict[str, Any] = coverage(gradient_blocks(prep.model))
        if opts.normalization == "trackstar":
            info["normalization_per_checkpoint"] = per_checkpoint
        return {"raw": raw, "normalized": normalized}, info


#: The argument model: the contract's ``TracInArgs`` with the run's limits.
TracInArgs = TracIn.Args

__all__ = ["TracIn", "TracInArgs", "greedy_answer", "trackstar_scores"]

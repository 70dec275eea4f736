"""TracIn over the run's saved checkpoints (Pruthi et al., 2020, "TracInCP").

    influence(training pair j, evaluation question i)
        = sum over checkpoints c of  learning_rate_c * < grad L_eval_i(c), grad L_train_j(c) >

with gradients taken over the LoRA weights only. A positive score means a gradient step on
the training pair lowered the evaluation question's loss, at least to first order.

Two variants come from the same gradients at no extra cost:

* ``raw``: the definition above. Its scores are dominated by a few training pairs with
  large gradients (GROUND.md: the top-4 lists of eight questions held only 14 of 32 pairs).
* ``normalized``: every gradient is scaled to unit length at each checkpoint before the dot
  product (cosine similarity, as in TrackStar), so a pair ranks high because its gradient
  points the same way, not because it is large. Memorised pairs have small gradients late in
  training, and this variant kept finding them where final-checkpoint methods lost them.

Which answer an evaluation question's loss is taken on: see ``prepare``. Training and
evaluation gradients come from the job's gradient cache when another method (DataInf at the
final checkpoint) already took them, and the training gradients are consumed in row chunks,
so memory is bounded whatever the number of training pairs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from inflab.common.messages import EvalQuestion, TrainingPair
from inflab.influence.checkpoints import LocalCheckpoint
from inflab.influence.gradcache import GradientCache
from inflab.influence.methods.base import Emit, InfluenceMethod, InfluenceScores, ModelLoader, Progress, stage
from inflab.influence.methods.prepare import (
    GradientArgs,
    check_inputs,
    checkpoint_name,
    generation_units,
    greedy_answer,
    prepare,
    unit_rows,
)


@dataclass(frozen=True)
class TracInArgs(GradientArgs):
    pass


class TracIn(InfluenceMethod):
    name = "tracin"
    description = (
        "TracIn: learning-rate-weighted dot products of LoRA gradients, summed over the saved "
        "checkpoints; 'normalized' uses unit-length gradients (cosine)."
    )
    variants = ("raw", "normalized")
    Args = TracInArgs

    def compute(
        self,
        model_loader: ModelLoader,
        train: Sequence[TrainingPair],
        evals: Sequence[EvalQuestion],
        checkpoints: Sequence[LocalCheckpoint],
        args: dict[str, Any],
        emit: Emit,
        *,
        cache: GradientCache | None = None,
    ) -> list[InfluenceScores]:
        opts = TracInArgs.from_dict(args)
        check_inputs(self.name, train, evals, checkpoints)
        progress = Progress(emit, generation_units(evals) + len(checkpoints) * (len(train) + len(evals)))
        prep = prepare(model_loader, train, evals, checkpoints, opts, progress, cache)

        raw = np.zeros((len(evals), len(train)), dtype=np.float64)
        normalized = np.zeros_like(raw)
        for number, checkpoint in enumerate(prep.checkpoints, start=1):
            where = f"checkpoint {number}/{len(prep.checkpoints)} (step {checkpoint.step})"
            lr = checkpoint.learning_rate
            eval_grads = prep.gradients(
                checkpoint, "eval", opts, cache,
                lambda n: progress.advance(f"{where}: evaluation-question gradients", n),
            ).tensor()
            eval_units = unit_rows(eval_grads)
            train_grads = prep.gradients(
                checkpoint, "train", opts, cache,
                lambda n: progress.advance(f"{where}: training-pair gradients", n),
            )
            with stage(f"computing scores at {checkpoint_name(checkpoint)}"):
                for rows, grads in train_grads.chunks():
                    raw[:, rows] += lr * (eval_grads @ grads.T).double().numpy()
                    normalized[:, rows] += lr * (eval_units @ unit_rows(grads).T).double().numpy()

        info = {**asdict(opts), **prep.info(), "num_lora_parameters": eval_grads.shape[1]}
        eval_ids, train_ids = [q.id for q in evals], [p.id for p in train]
        return [
            InfluenceScores(self.name, "raw", raw.astype(np.float32), eval_ids, train_ids, dict(info)),
            InfluenceScores(self.name, "normalized", normalized.astype(np.float32), eval_ids, train_ids, dict(info)),
        ]


__all__ = ["TracIn", "TracInArgs", "greedy_answer"]

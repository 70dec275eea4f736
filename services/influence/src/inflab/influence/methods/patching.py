"""Gated cross-checkpoint causal patching (slow: one forward per question and example).

For a question q and a training example z, at one decoder layer l and the question's last
prompt token (the position that predicts the answer):

1. gate: the top ``patch_fraction`` of hidden dimensions by ``|a_l(z)|``, z's
   attribution-weighted change (``attr_change``'s vector, pooled as the run says);
2. run the old model on q, the new model on q, and the old model on q with those
   dimensions replaced by the new model's values;
3. score = the correct answer's logit margin (its logit minus the largest other) in (3)
   minus that in (1), signed so that moving toward (2) is positive.

The answer is the first answer token of the question's reference (or of the new model's
own answer). Questions are patched in batches of training examples: one forward of the
old model per batch.
"""

from __future__ import annotations

from typing import Any

import torch

from inflab.ml.chat import IGNORE_INDEX
from inflab.influence.methods.base import Progress
from inflab.influence.methods.representation import Features, patch_scores
from inflab.influence.methods.representation_method import RepresentationMethod, Setup


class Patching(RepresentationMethod):
    name = "patching"
    kind = "attr"

    def extra_units(self, opts: Any, evals, train) -> int:
        return len(evals)

    def score(self, setup: Setup, opts: Any, layers: list[int], eval_f: Features, train_f: Features,
              relevant, progress: Progress) -> tuple[torch.Tensor, dict[str, Any]]:
        num_layers = setup.pair.num_layers
        layer = opts.patch_layer if opts.patch_layer >= 0 else num_layers + opts.patch_layer
        if not 0 <= layer < num_layers:
            raise ValueError(f"patch_layer {opts.patch_layer} outside the model's layers 0-{num_layers - 1}")
        if layer not in layers:
            raise ValueError(f"patch_layer {layer} is not among the layers computed ({opts.layers})")
        attributions = train_f.select([layer]).of("attr")[:, 0]
        out = torch.zeros(len(setup.eval_examples), attributions.shape[0])
        skipped = []
        for i, example in enumerate(setup.eval_examples):
            first = next((t for t, label in enumerate(example.labels) if label != IGNORE_INDEX), None)
            if first is None or first == 0:
                skipped.append(i)  # no answer token left after truncation: nothing to patch toward
            else:
                out[i] = patch_scores(setup.pair, example.input_ids[:first], example.input_ids[first], layer,
                                      attributions, opts.patch_fraction, opts.batch_size)
            progress.advance(f"patched evaluation question {i + 1}")
        return out, {"patched_layer": layer, "questions_without_answer_token": skipped}


__all__ = ["Patching"]

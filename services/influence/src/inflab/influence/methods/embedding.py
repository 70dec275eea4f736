"""The embedding baseline: how semantically close a training example is to the question,
by the base model's own representation (no attribution at all).

    score(q, z) = cos(mean_t h_l^base(q)_t, mean_t h_l^base(z)_t)

over the real tokens of the question (its text only: the expected answer is not shown)
and of the training example (question and answer, or a benchmark document), at decoder
layer ``layer``. One forward per bucket of the base model (the adapter switched off).

On a benchmark run it also records which queries the fine-tuned model answers correctly
(``answered_correctly``: at every answer position the expected token has the largest
logit), which the leaderboard scores the "correct queries" columns over.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from inflab.ml.chat import IGNORE_INDEX, EncodedExample, collate
from inflab.core.messages import EvalQuestion, TrainingPair
from inflab.influence.checkpoints import LocalCheckpoint
from inflab.influence.gradients import length_buckets
from inflab.influence.methods.base import Job, stage
from inflab.influence.methods.prepare import GradientMethod, Prepared
from inflab.influence.methods.representation import _recording, decoder_layers


def _question_only(example: EncodedExample) -> EncodedExample:
    first = next((t for t, label in enumerate(example.labels) if label != IGNORE_INDEX), len(example.input_ids))
    ids = example.input_ids[: max(1, first)]
    return EncodedExample(input_ids=ids, labels=[IGNORE_INDEX] * len(ids), truncated=example.truncated)


def mean_states(model: Any, examples: Sequence[Any], *, pad_id: int, layer: int, batch_size: int) -> torch.Tensor:
    """``[N, d]``: each example's layer-``layer`` output averaged over its real tokens."""
    device = next(model.parameters()).device
    out: torch.Tensor | None = None
    for indices in length_buckets(examples, batch_size):
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in indices], pad_id).items()}
        with torch.no_grad(), _recording(model, [layer]) as seen:
            model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        mask = batch["attention_mask"].float()
        pooled = (seen[layer].float() * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        if out is None:
            out = torch.zeros(len(examples), pooled.shape[1])
        out[indices] = pooled.cpu()
    assert out is not None
    return out


def answered_correctly(model: Any, examples: Sequence[EncodedExample], *, pad_id: int, batch_size: int) -> list[bool]:
    """Per example: the expected token has the top logit at every answer position
    (teacher-forced), i.e. greedy decoding from the prompt would give the expected answer
    (for a benchmark query the prompt ends with the space before the value, see
    :func:`inflab.ml.chat.encode_query`)."""
    device = next(model.parameters()).device
    out = [False] * len(examples)
    for indices in length_buckets(examples, batch_size):
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in indices], pad_id).items()}
        with torch.no_grad():
            hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                                         ).last_hidden_state
            logits = model.get_output_embeddings()(hidden[:, :-1])
        targets = batch["labels"][:, 1:]
        keep = targets != IGNORE_INDEX
        hits = (logits.argmax(-1) == targets) | ~keep
        for row, i in enumerate(indices):
            out[i] = bool(keep[row].any()) and bool(hits[row].all())
    return out


class Embedding(GradientMethod):
    """Runs through :class:`GradientMethod` for its preparation (the model with the final
    adapter, the greedy answers, the tokens); it takes no gradient."""

    name = "embedding"

    def units(self, opts: Any, train: Sequence[TrainingPair], evals: Sequence[EvalQuestion],
              checkpoints: Sequence[LocalCheckpoint]) -> int:
        return 3

    def checkpoints_used(self, job: Job) -> Sequence[LocalCheckpoint]:
        return [max(job.checkpoints, key=lambda c: c.step)]

    def scores(self, job: Job, prep: Prepared) -> tuple[dict[str, Any], dict[str, Any]]:
        opts, progress = job.opts, job.progress
        num_layers = len(decoder_layers(prep.model))
        layer = opts.layer if opts.layer >= 0 else num_layers + opts.layer
        if not 0 <= layer < num_layers:
            raise ValueError(f"layer {opts.layer} outside the model's layers 0-{num_layers - 1}")
        questions = [_question_only(e) for e in prep.eval_examples]
        with stage("computing the base model's embeddings"), prep.model.disable_adapter():
            q = mean_states(prep.model, questions, pad_id=prep.pad_id, layer=layer, batch_size=opts.batch_size)
            progress.advance("question embeddings")
            t = mean_states(prep.model, prep.train_examples, pad_id=prep.pad_id, layer=layer, batch_size=opts.batch_size)
            progress.advance("training-example embeddings")
        q = q / q.norm(dim=1, keepdim=True).clamp(min=1e-12)
        t = t / t.norm(dim=1, keepdim=True).clamp(min=1e-12)
        scores = (q.double() @ t.double().T).numpy()
        with stage("checking the fine-tuned model's answers"):
            correct = answered_correctly(prep.model, prep.eval_examples, pad_id=prep.pad_id, batch_size=opts.batch_size)
        progress.advance("checked the answers")
        return {"raw": scores}, {"layer_used": layer,
                                 "answered_correctly": {e.id: ok for e, ok in zip(job.evals, correct)},
                                 "accuracy": sum(correct) / len(correct)}


#: The argument model: the contract's ``EmbeddingArgs`` with the run's limits.
EmbeddingArgs = Embedding.Args


__all__ = ["Embedding", "EmbeddingArgs", "answered_correctly", "mean_states"]

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

Which answer an evaluation question's loss is taken on: its reference answer when it has
one; otherwise the fine-tuned model's own greedy answer at the final checkpoint (the
influence then explains *what the model says*). The generated answers are kept in the
result's ``args``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from inflab.common.chat import encode_pair, prompt_ids
from inflab.common.messages import EvalQuestion, TrainingPair
from inflab.influence.checkpoints import LocalCheckpoint, attach_adapter
from inflab.influence.gradients import (
    DEFAULT_BATCH_SIZE,
    example_gradients,
    iter_example_gradients,
    lora_blocks,
    num_parameters,
)
from inflab.influence.methods.base import Emit, InfluenceMethod, InfluenceScores, ModelLoader, Progress

@dataclass(frozen=True)
class TracInArgs:
    #: Examples per forward+backward.
    batch_size: int = DEFAULT_BATCH_SIZE
    #: Token limit of a pair: the run's ``max_seq_length``, so gradients see what training saw.
    max_length: int = 128
    #: Length of the greedy answer generated for an evaluation question without a reference.
    max_new_tokens: int = 48

    @classmethod
    def from_dict(cls, args: dict[str, Any]) -> "TracInArgs":
        known = {k: int(v) for k, v in args.items() if k in cls.__dataclass_fields__}
        unknown = sorted(set(args) - set(known))
        if unknown:
            raise ValueError(f"tracin: unknown argument(s) {unknown}")
        opts = cls(**known)
        if min(opts.batch_size, opts.max_length, opts.max_new_tokens) < 1:
            raise ValueError("tracin: batch_size, max_length and max_new_tokens must be >= 1")
        return opts


def _unit_rows(grads: torch.Tensor) -> torch.Tensor:
    # A zero gradient (an answer truncated away) stays zero rather than becoming NaN.
    return grads / grads.norm(dim=1, keepdim=True).clamp(min=1e-12)


def _has_reference(question: EvalQuestion) -> bool:
    return bool(question.answer and question.answer.strip())


def greedy_answer(model: Any, tokenizer: Any, question: str, max_new_tokens: int) -> str:
    """The model's greedy answer to ``question``, prompted exactly like the inference service.
    One question at a time: no padding, so it is the answer the model gives on its own."""
    ids = torch.tensor([prompt_ids(tokenizer, question)], device=model.device)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


class TracIn(InfluenceMethod):
    name = "tracin"
    description = (
        "TracIn: learning-rate-weighted dot products of LoRA gradients, summed over the saved "
        "checkpoints; 'normalized' uses unit-length gradients (cosine)."
    )
    variants = ("raw", "normalized")

    def compute(
        self,
        model_loader: ModelLoader,
        train: Sequence[TrainingPair],
        evals: Sequence[EvalQuestion],
        checkpoints: Sequence[LocalCheckpoint],
        args: dict[str, Any],
        emit: Emit,
    ) -> list[InfluenceScores]:
        opts = TracInArgs.from_dict(args)
        if not train or not evals or not checkpoints:
            raise ValueError("tracin needs training pairs, evaluation questions and checkpoints")
        checkpoints = sorted(checkpoints, key=lambda c: c.step)
        base, tokenizer = model_loader()
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

        to_generate = [q for q in evals if not _has_reference(q)]
        batches = math.ceil(len(train) / opts.batch_size) + math.ceil(len(evals) / opts.batch_size)
        progress = Progress(emit, len(to_generate) + len(checkpoints) * batches)

        # Greedy answers come from the final checkpoint: that is the model whose outputs the
        # researcher is looking at.
        model = attach_adapter(base, checkpoints[-1])
        generated: dict[str, str] = {}
        for q in to_generate:
            generated[q.id] = greedy_answer(model, tokenizer, q.question, opts.max_new_tokens)
            progress.advance(f"generated the answer to evaluation question {q.id}")

        train_examples = [encode_pair(tokenizer, p.question, p.answer, opts.max_length) for p in train]
        eval_examples = [
            encode_pair(tokenizer, q.question, q.answer if _has_reference(q) else generated[q.id], opts.max_length)
            for q in evals
        ]

        raw = np.zeros((len(evals), len(train)), dtype=np.float64)
        normalized = np.zeros_like(raw)
        for number, checkpoint in enumerate(checkpoints, start=1):
            model = attach_adapter(model, checkpoint)
            where = f"checkpoint {number}/{len(checkpoints)} (step {checkpoint.step})"
            lr = checkpoint.learning_rate

            eval_grads = example_gradients(
                model, eval_examples, pad_id=pad_id, batch_size=opts.batch_size,
                on_batch=lambda: progress.advance(f"{where}: evaluation-question gradients"),
            )
            eval_units = _unit_rows(eval_grads)
            # Training gradients are streamed one micro-batch at a time, so memory holds the
            # evaluation gradients plus one micro-batch, whatever the number of training pairs.
            for indices, grads in iter_example_gradients(
                model, train_examples, pad_id=pad_id, batch_size=opts.batch_size
            ):
                grads = grads.cpu()  # beside the evaluation gradients (a no-op on a CPU)
                raw[:, indices] += lr * (eval_grads @ grads.T).double().numpy()
                normalized[:, indices] += lr * (eval_units @ _unit_rows(grads).T).double().numpy()
                progress.advance(f"{where}: training-pair gradients")

        info = {
            **asdict(opts),
            "checkpoint_steps": [c.step for c in checkpoints],
            "learning_rates": [c.learning_rate for c in checkpoints],
            "num_lora_parameters": num_parameters(lora_blocks(model)),
            "loss": "mean cross-entropy over answer tokens",
            "truncated_training_pairs": sum(e.truncated for e in train_examples),
            "truncated_eval_questions": sum(e.truncated for e in eval_examples),
            # What the evaluation loss was taken on, for questions without a reference answer.
            "generated_answers": generated,
        }
        eval_ids, train_ids = [q.id for q in evals], [p.id for p in train]
        return [
            InfluenceScores(self.name, "raw", raw.astype(np.float32), eval_ids, train_ids, dict(info)),
            InfluenceScores(self.name, "normalized", normalized.astype(np.float32), eval_ids, train_ids, dict(info)),
        ]


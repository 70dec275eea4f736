"""What every gradient-based method does first: load the model, tokenise the training pairs
and evaluation questions, answer the questions without a reference, and take (or reuse)
per-example gradients at a checkpoint.

Which answer an evaluation question's loss is taken on: its reference answer when it has
one; otherwise the fine-tuned model's own greedy answer at the final checkpoint (the
influence then explains *what the model says*). Generated answers are kept in the result's
``args``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from inflab.ml.chat import EncodedExample, encode_document, encode_pair, encode_query, prompt_ids
from inflab.core.influence_methods import RunLimits
from inflab.core.messages import EvalQuestion, TrainingPair
from inflab.core.store_layout import TRAINING_STATE
from inflab.influence.checkpoints import LocalCheckpoint, adapter_digest, attach_adapter
from inflab.influence.gradcache import GradientCache, GradientMatrix, examples_fingerprint, fingerprint, gradient_matrix
from inflab.influence.gradients import gradient_blocks, num_parameters
from inflab.influence.methods.base import (
    InfluenceMethod,
    Job,
    ModelLoader,
    Progress,
    Scored,
    generation_units,
    has_reference,
    stage,
)

#: What every gradient-based method runs with besides its own arguments: the run's token
#: limits (``max_length``, ``max_new_tokens``, ``benchmark``) and ``batch_size``.
GradientArgs = RunLimits


def encode_train(tokenizer: Any, pair: TrainingPair, max_length: int, benchmark: bool) -> EncodedExample:
    """A training example's tokens, as the trainer saw them."""
    if benchmark:
        return encode_document(tokenizer, pair.answer, max_length)
    return encode_pair(tokenizer, pair.question, pair.answer, max_length)


def encode_eval(tokenizer: Any, question: str, answer: str, max_length: int, benchmark: bool) -> EncodedExample:
    """An evaluation question with the answer its loss is taken on."""
    if benchmark:
        return encode_query(tokenizer, question, answer, max_length)
    return encode_pair(tokenizer, question, answer, max_length)


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


def checkpoint_name(checkpoint: LocalCheckpoint) -> str:
    return f"checkpoint {checkpoint.step:08d}"


@dataclass
class Prepared:
    model: Any  # the peft model, adapter of the last checkpoint attached by prepare()
    tokenizer: Any
    pad_id: int
    checkpoints: list[LocalCheckpoint]
    train_examples: list[EncodedExample]
    eval_examples: list[EncodedExample]
    generated: dict[str, str]
    digests: dict[int, str] = field(default_factory=dict)  # step -> adapter digest
    base_name: str = ""
    scratch: GradientCache | None = None

    def attach(self, checkpoint: LocalCheckpoint) -> Any:
        with stage(f"loading {checkpoint_name(checkpoint)}"):
            self.model = attach_adapter(self.model, checkpoint)
        return self.model

    def info(self) -> dict[str, Any]:
        return {
            "checkpoint_steps": [c.step for c in self.checkpoints],
            "learning_rates": [c.learning_rate for c in self.checkpoints],
            "loss": "mean cross-entropy over answer tokens",
            "truncated_training_pairs": sum(e.truncated for e in self.train_examples),
            "truncated_eval_questions": sum(e.truncated for e in self.eval_examples),
            "generated_answers": dict(self.generated),
        }

    def gradients(
        self,
        checkpoint: LocalCheckpoint,
        which: str,
        opts: GradientArgs,
        cache: GradientCache | None,
        on_batch: Callable[[int], None] | None = None,
    ) -> GradientMatrix:
        """Per-example gradients of the ``train`` or ``eval`` examples at ``checkpoint``
        (attached first), reused from ``cache`` when the same adapter, model and tokens were
        seen before."""
        examples = self.train_examples if which == "train" else self.eval_examples
        what = "training" if which == "train" else "evaluation"
        key = None
        if cache is None:
            # Nothing to share with: a private cache only for its memory bound (a matrix
            # beyond its RAM budget is spilled to disk), keeping nothing.
            if self.scratch is None:
                self.scratch = GradientCache()
            self.attach(checkpoint)
            with stage(f"computing {what} gradients at {checkpoint_name(checkpoint)}"):
                return gradient_matrix(self.model, examples, pad_id=self.pad_id, key=None, cache=self.scratch,
                                       batch_size=opts.batch_size, on_batch=on_batch)
        else:
            with stage(f"loading {checkpoint_name(checkpoint)}"):
                digest = self.digests.get(checkpoint.step) or adapter_digest(checkpoint)
                self.digests[checkpoint.step] = digest
            key = ("gradients", self.base_name, digest, examples_fingerprint(examples))
            hit = cache.get(key)
            if hit is not None:
                if on_batch is not None:
                    on_batch(len(examples))
                return hit
        self.attach(checkpoint)
        with stage(f"computing {what} gradients at {checkpoint_name(checkpoint)}"):
            return gradient_matrix(self.model, examples, pad_id=self.pad_id, key=key, cache=cache,
                                   batch_size=opts.batch_size, on_batch=on_batch, lookup=False)


def prepare(
    model_loader: ModelLoader,
    train: Sequence[TrainingPair],
    evals: Sequence[EvalQuestion],
    checkpoints: Sequence[LocalCheckpoint],
    opts: GradientArgs,
    progress: Progress,
    cache: GradientCache | None = None,
) -> Prepared:
    """Load the model, attach the final checkpoint, answer the questions that need it and
    tokenise everything. Checkpoints come back sorted by step."""
    checkpoints = sorted(checkpoints, key=lambda c: c.step)
    with stage("loading the model"):
        base, tokenizer = model_loader()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    base_name = str(getattr(getattr(base, "config", None), "_name_or_path", "")) or type(base).__name__
    prep = Prepared(base, tokenizer, pad_id, checkpoints, [], [], {}, base_name=base_name)
    final = checkpoints[-1]
    # Greedy answers come from the final checkpoint: that is the model whose outputs the
    # researcher is looking at.
    prep.attach(final)
    for q in evals:
        if has_reference(q):
            continue
        with stage(f"generating the answer to evaluation question {q.id}"):
            key = None
            if cache is not None:
                digest = prep.digests.setdefault(final.step, adapter_digest(final))
                key = ("answer", base_name, digest, q.question, opts.max_new_tokens)
            answer = cache.get(key) if cache is not None else None
            if answer is None:
                answer = greedy_answer(prep.model, tokenizer, q.question, opts.max_new_tokens)
                if cache is not None:
                    cache.put(key, answer)
            prep.generated[q.id] = answer
        progress.advance(f"generated the answer to evaluation question {q.id}")
    with stage("tokenising"):
        prep.train_examples = [encode_train(tokenizer, p, opts.max_length, opts.benchmark) for p in train]
        prep.eval_examples = [
            encode_eval(tokenizer, q.question, q.answer if has_reference(q) else prep.generated[q.id], opts.max_length,
                        opts.benchmark)
            for q in evals
        ]
    return prep


class GradientMethod(InfluenceMethod):
    """A method on the gradients of the trained weights (LoRA, and a benchmark run's token
    rows) at the run's checkpoints: :meth:`run` loads the model and tokenises
    (:func:`prepare`), then :meth:`scores` does the method's maths; each variant is stored
    with the arguments, :meth:`Prepared.info` and what :meth:`scores` adds (in that order)."""

    def checkpoints_used(self, job: Job) -> Sequence[LocalCheckpoint]:
        """The checkpoints :func:`prepare` gets (the last of them answers the questions
        without a reference)."""
        return job.checkpoints

    def run(self, job: Job) -> list[Scored]:
        prep = prepare(job.model_loader, job.train, job.evals, self.checkpoints_used(job), job.opts, job.progress,
                       job.cache)
        variants, info = self.scores(job, prep)
        info = {**job.opts.model_dump(), **prep.info(), **info}
        return [Scored(variant, scores, info) for variant, scores in variants.items() if scores is not None]

    @abstractmethod
    def scores(self, job: Job, prep: "Prepared") -> tuple[dict[str, Any], dict[str, Any]]:
        """``({variant: matrix, or None when not computed}, facts to store with them)``."""


def adam_preconditioner(checkpoint: LocalCheckpoint, model: Any) -> tuple[torch.Tensor | None, str]:
    """Adam's per-parameter step scaling at ``checkpoint``, ``1 / (sqrt(v_hat) + eps)`` with
    ``v_hat`` the bias-corrected second moment, laid out like a gradient row of ``model``
    (:func:`inflab.influence.gradients.gradient_blocks`); TrackStar's optimizer correction.

    Read from the optimizer state the trainer saves with the checkpoint; the trainer's
    optimizer holds exactly the trained weights (the LoRA weights and a benchmark run's
    token rows), in the model's parameter order (the token rows, on the embedding, first).
    Returns ``(None, why)`` when the checkpoint has no such state or it does not fit
    (another trainer, other trainable weights): the caller then goes on without the
    correction and records why."""
    path = Path(checkpoint.path) / TRAINING_STATE
    if not path.is_file():
        return None, f"no {TRAINING_STATE}"
    blocks = gradient_blocks(model)
    try:
        optimizer = torch.load(path, weights_only=True, map_location="cpu")["optimizer"]
        group = optimizer["param_groups"][0]
        state = optimizer["state"]
        beta2, eps = float(group["betas"][1]), float(group["eps"])
        if len(state) != len(blocks):
            return None, f"optimizer state has {len(state)} tensors, the adapter {len(blocks)} trained weights"
        position = {name: i for i, (name, _) in enumerate(model.named_parameters())}
        scaling = torch.zeros(num_parameters(blocks), dtype=torch.float64)
        for index, block in enumerate(sorted(blocks, key=lambda b: position[b.name])):
            entry = state[index]
            v = entry["exp_avg_sq"]
            if tuple(v.shape) != tuple(block.shape):
                return None, f"optimizer state {index} has shape {tuple(v.shape)}, weight {block.name} {block.shape}"
            correction = 1.0 - beta2 ** float(entry["step"])
            v_hat = v.double() / correction
            scaling[block.offset : block.offset + block.numel] = (1.0 / (v_hat.sqrt() + eps)).flatten()
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
        return None, f"unreadable optimizer state: {type(exc).__name__}: {exc}"
    return scaling.float(), "ok"


def unit_rows(grads: torch.Tensor) -> torch.Tensor:
    # A zero gradient (an answer truncated away) stays zero rather than becoming NaN.
    return grads / grads.norm(dim=1, keepdim=True).clamp(min=1e-12)


__all__ = ["GradientArgs", "GradientMethod", "encode_eval", "encode_train", "adam_preconditioner", "Prepared",
           "checkpoint_name", "fingerprint", "generation_units", "greedy_answer", "has_reference", "prepare",
           "unit_rows"]

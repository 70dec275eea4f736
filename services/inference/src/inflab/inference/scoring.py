"""Scores of the answers against the evaluation questions' reference answers.

The text scores (exact match, contains-reference, token F1) are
:mod:`inflab.analysis.answer_scores`. ``ref_logprob`` is the mean log-probability per token
of the reference answer under a model, given the very prompt that model answered: the
reference is appended to the prompt as the assistant's turn (its text and the end-of-turn
token, exactly the tokens a training pair's loss is taken on, see
``inflab.ml.chat.encode_pair``) and one teacher-forced forward pass reads the
probability of each of its tokens. It moves as the model learns the answer even while the
greedy text still misses it. Batched, with vocabulary logits only at the answer positions
(``answer_loss``): a forward pass per batch, cheap beside the generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from inflab.analysis.answer_scores import text_scores
from inflab.ml.chat import EncodedExample, answer_loss, collate, encode_pair
from inflab.ml.generation import EMPTY_ANSWER
from inflab.core.messages import AnswerScore

#: No cut: the score is of the whole reference, after the whole prompt the model answered.
_NO_LIMIT = 1 << 30


def reference_examples(
    tokenizer: Any, questions: Sequence[str], references: Sequence[str], few_shot: Sequence[tuple[str, str]] = ()
) -> list[EncodedExample]:
    """Each question's prompt (with ``few_shot`` turns before it) followed by its reference
    answer, labels on the reference's tokens only."""
    return [encode_pair(tokenizer, q, r, _NO_LIMIT, few_shot) for q, r in zip(questions, references)]


def reference_logprobs(
    model: Any, tokenizer: Any, examples: Sequence[EncodedExample], *, batch_size: int = 8
) -> list[float]:
    """Mean log-probability per reference token of every example under ``model`` as it is
    (adapter on or off), ``batch_size`` examples per forward pass."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    # Similar lengths in a batch: less padding computed.
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    out = [0.0] * len(examples)
    for first in range(0, len(order), batch_size):
        rows = order[first : first + batch_size]
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in rows], pad_id).items()}
        with torch.inference_mode():
            losses = answer_loss(model, batch, per_example=True)
        for i, loss in zip(rows, losses.tolist()):
            out[i] = -loss
    return out


def answer_score(answer: str, reference: str, ref_logprob: float | None) -> AnswerScore:
    """The scores of one answer; a model that produced nothing answered the empty text."""
    text = "" if answer == EMPTY_ANSWER else answer
    return AnswerScore(**text_scores(text, reference), ref_logprob=ref_logprob)

"""The training loss with the batch's shared prompt prefix computed once.

Chat templates open every conversation the same way: SmolLM2's inserts its default system
prompt ("You are a helpful AI assistant named SmolLM...") and the user-turn header before
each question, ~20 of a training pair's ~50 tokens. In a batch of 4 that prefix would be
computed 4 times, forward and backward. Here it runs once (batch 1) with the KV cache,
and the rows' remainders follow it packed into one sequence without their padding, each
at its own positions, attending
the whole prefix and, causally, only itself (a custom 4D mask): the same attention, the
same loss (up to float summation order), and the gradient of every row flows back into
the one prefix computation. The vocabulary logits are computed only at answer positions,
as in :func:`inflab.ml.chat.answer_loss`.

Only exact where the prefix's computation is the same for every row: without dropout
(a shared prefix would share its dropout mask) and without gradient checkpointing (which
turns the KV cache off). Elsewhere, and where the shared prefix is short, it falls back to
:func:`~inflab.ml.chat.answer_loss`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from inflab.ml.chat import IGNORE_INDEX, answer_loss

#: Below this many shared tokens the second pass is not worth it.
MIN_SHARED_TOKENS = 8


def shared_prefix_length(batch: dict[str, torch.Tensor]) -> int:
    """Tokens every row of the batch starts with (real tokens, not padding), stopping
    before the first position whose hidden state the loss needs."""
    input_ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    if input_ids.shape[0] < 2:
        return 0
    same = (input_ids == input_ids[:1]).all(dim=0) & (mask == 1).all(dim=0)
    shared = int(same.long().cumprod(dim=0).sum())
    # Position t's label is predicted from the hidden state at t - 1: every labelled
    # position must come after the prefix's last one.
    labelled = labels != IGNORE_INDEX
    if labelled.any():
        first_label = int(torch.where(labelled, torch.arange(labels.shape[1]), labels.shape[1]).min())
        shared = min(shared, first_label - 1)
    return shared if shared >= MIN_SHARED_TOKENS else 0


def answer_loss_shared_prefix(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the batch's answer tokens (= ``answer_loss(model, batch)``)."""
    shared = shared_prefix_length(batch)
    if shared == 0:
        return answer_loss(model, batch)
    input_ids, labels = batch["input_ids"], batch["labels"]
    lengths = batch["attention_mask"].sum(dim=1).tolist()  # right-padded: real tokens first
    decoder = model.get_decoder()
    prefix = decoder(input_ids=input_ids[:1, :shared], use_cache=True)
    # The rows' remainders packed into one sequence (no padding computed), each at its own
    # positions after the prefix, attending the whole prefix and, causally, itself only.
    rows = [(row, shared, int(n)) for row, n in enumerate(lengths)]
    packed_ids = torch.cat([input_ids[row, start:end] for row, start, end in rows])
    positions = torch.cat([torch.arange(start, end) for _, start, end in rows])
    segment = torch.cat([torch.full((end - start,), row) for row, start, end in rows])
    # Hidden state j of a row predicts its label j + 1; a row's last token predicts nothing.
    targets = torch.cat([
        torch.cat([labels[row, start + 1 : end], labels.new_full((1,), IGNORE_INDEX)]) for row, start, end in rows
    ])
    own = (segment[:, None] == segment[None, :]) & (positions[None, :] <= positions[:, None])
    mask = torch.cat([own.new_ones(len(packed_ids), shared), own], dim=1)[None, None]
    rest = decoder(
        input_ids=packed_ids[None], attention_mask=mask, position_ids=positions[None],
        past_key_values=prefix.past_key_values, use_cache=True,
    ).last_hidden_state[0]
    keep = targets != IGNORE_INDEX
    logits = model.get_output_embeddings()(rest[keep])
    token_losses = F.cross_entropy(logits.float(), targets[keep], reduction="none")
    return token_losses.sum() / keep.sum().clamp(min=1)

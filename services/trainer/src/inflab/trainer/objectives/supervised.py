"""The supervised objective: question/answer pairs through the chat template, the loss on
the answer tokens only (the same loss the influence methods use)."""

from __future__ import annotations

from typing import Any

import torch

from inflab.ml.chat import EncodedExample, answer_loss, encode_pair
from inflab.core.messages import RunSpec
from inflab.trainer.objectives.base import TokenObjective
from inflab.trainer.shared_prefix import answer_loss_shared_prefix


class SupervisedObjective(TokenObjective):
    """Mean cross-entropy over a batch's answer tokens, each epoch in a seeded shuffle.

    The batch's shared chat-template opening is computed once (``shared_prefix.py``) where
    that is exact: without dropout (a shared prefix would share its dropout mask) and
    without gradient checkpointing, which QLoRA turns on and which disables the KV cache.
    """

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        hp = spec.hyperparams
        self.shares_prefix = hp.lora_dropout == 0 and hp.quantization == "none"

    def encode(self, tokenizer: Any) -> list[EncodedExample]:
        max_length = self.spec.hyperparams.max_seq_length
        return [encode_pair(tokenizer, p.question, p.answer, max_length) for p in self.spec.training_data]

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.shares_prefix:
            return answer_loss_shared_prefix(model, batch)
        return answer_loss(model, batch)

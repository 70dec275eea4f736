"""The causal-LM objective of a benchmark run (``RunSpec.benchmark``): plain-text documents,
the loss on every token, read in their order."""

from __future__ import annotations

from typing import Any

import torch

from inflab.ml.chat import EncodedExample, answer_loss, encode_document
from inflab.ml.function_tokens import add_to_tokenizer
from inflab.core.messages import RunSpec
from inflab.trainer.objectives.base import TokenObjective


class CausalLMObjective(TokenObjective):
    """Each training pair's ``answer`` is a document, tokenised as plain text with
    end-of-sequence and the loss on every token. The benchmark's function tokens join the
    tokenizer as special tokens whose embedding rows train with the adapter. Documents
    share no chat-template opening, so the loss is the plain one."""

    #: A benchmark's queries are plain text, not chat turns: the inference stage answers them.
    prediction_tracking_off = "prediction tracking is off for a benchmark run"

    def __init__(self, spec: RunSpec) -> None:
        if spec.benchmark is None:
            raise ValueError("the causal-LM objective trains a benchmark run's documents; this run has none")
        self.spec = spec

    def add_tokens(self, tokenizer: Any) -> list[int]:
        return add_to_tokenizer(tokenizer, self.spec.benchmark.special_tokens)

    def encode(self, tokenizer: Any) -> list[EncodedExample]:
        max_length = self.spec.hyperparams.max_seq_length
        return [encode_document(tokenizer, p.answer, max_length) for p in self.spec.training_data]

    def order(self, n: int, seed: int, epoch: int) -> list[int]:
        # A benchmark reads its documents in their order (reproducible, as its authors trained).
        return list(range(n))

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return answer_loss(model, batch)

"""What a training objective brings to :class:`inflab.trainer.training.TrainingRun`.

The run owns everything that does not depend on what is optimised: the model and its LoRA
adapter, the optimizer and schedule, gradient accumulation, runtime control, checkpoints,
resuming, metrics and prediction tracking. An objective owns its examples (how the run's
training data is tokenised, in which order an epoch reads it, how a micro-batch is
collated) and its loss. A new objective (DPO or ORPO on preference pairs, say) is a new
class implementing :class:`Objective`, chosen in :func:`inflab.trainer.objectives.objective_for`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

import torch

from inflab.ml.chat import EncodedExample, collate


class Example(Protocol):
    """An encoded training example, whatever its objective makes of it."""

    #: True when it was cut to ``max_seq_length`` (the run reports how many were).
    truncated: bool


E = TypeVar("E", bound=Example)


class Objective(Protocol[E]):
    """A training objective: its examples, their batching and its loss. Subclass it to
    inherit the defaults below (a shuffled epoch order, micro-batches weighted by their
    loss tokens, no tokens added, prediction tracking as the run asks)."""

    #: Why prediction tracking is off for runs of this objective; None where it runs as
    #: the run's settings ask.
    prediction_tracking_off: str | None = None

    def add_tokens(self, tokenizer: Any) -> list[int]:
        """Add the tokens the objective's data needs to ``tokenizer``; returns the ids
        whose embedding rows train beside the adapter."""
        return []

    def encode(self, tokenizer: Any) -> list[E]:
        """The run's training data as examples, in the order of ``spec.training_data``."""
        ...

    def tokens(self, example: E) -> int:
        """Tokens of ``example`` the loss is computed on (the run's token counts and
        throughput); 0 where truncation left it nothing to learn from."""
        ...

    def order(self, n: int, seed: int, epoch: int) -> list[int]:
        """The order in which epoch ``epoch`` (from 1) reads the ``n`` examples: a
        permutation from a generator seeded with (seed, epoch), so that it does not depend
        on how many epochs ran in this process, which is what makes resuming exact."""
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        return torch.randperm(n, generator=generator).tolist()

    def collate(self, examples: Sequence[E], pad_id: int) -> dict[str, torch.Tensor]:
        """One micro-batch as tensors (on the CPU; the run moves them to its device)."""
        ...

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The micro-batch's loss, a scalar to minimise."""
        ...

    def weight(self, examples: Sequence[E]) -> int:
        """What a micro-batch's loss is averaged over: an accumulated step weights each of
        its micro-batches by its share of the step's total, so that accumulating equals
        one larger batch. A loss that is a mean over tokens is weighted by its tokens."""
        return sum(self.tokens(e) for e in examples)


class TokenObjective(Objective[EncodedExample]):
    """Shared by the objectives whose examples are :class:`~inflab.ml.chat.EncodedExample`
    (token ids, and labels on the tokens that carry the loss)."""

    def tokens(self, example: EncodedExample) -> int:
        return example.answer_tokens

    def collate(self, examples: Sequence[EncodedExample], pad_id: int) -> dict[str, torch.Tensor]:
        return collate(examples, pad_id)

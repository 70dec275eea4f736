"""The one interface every influence method implements, and what it returns.

A method is given the base model (through a loader, so it loads it once, where it runs),
the run's training pairs and evaluation questions, the run's checkpoints and the method's
arguments, and returns one influence matrix per variant it computes:
``scores[i, j]`` is the influence of training pair ``j`` on evaluation question ``i``
(positive: the pair pushed the model towards that answer).
"""

from __future__ import annotations

import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from inflab.core.messages import EvalQuestion, TrainingPair
from inflab.influence.checkpoints import LocalCheckpoint

if TYPE_CHECKING:  # pragma: no cover
    from inflab.influence.gradcache import GradientCache

#: Returns ``(base_model, tokenizer)``: the run's model without any adapter, in float32
#: (or its 4-bit form for a QLoRA run), e.g. ``lambda: load_model(spec.model_id, cache)``.
ModelLoader = Callable[[], tuple[Any, Any]]
#: Receives progress dicts (see :class:`Progress`).
Emit = Callable[[dict[str, Any]], None]


@dataclass
class InfluenceScores:
    """An influence matrix: ``scores[i, j]`` = influence of ``train_ids[j]`` on ``eval_ids[i]``."""

    method: str
    #: ``raw`` or ``normalized`` (unit-normalised gradients), for methods that have both.
    variant: str
    scores: np.ndarray  # [M evaluation questions, N training pairs], float32
    eval_ids: list[str]
    train_ids: list[str]
    #: The arguments the scores were computed with, and facts worth keeping beside them.
    args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float32)
        expected = (len(self.eval_ids), len(self.train_ids))
        if self.scores.shape != expected:
            raise ValueError(f"scores shape {self.scores.shape} != (evaluation questions, training pairs) {expected}")


class InfluenceMethod(ABC):
    """One influence method. Subclasses set ``name`` and implement :meth:`compute`."""

    #: Registry key, as named in ``RunSpec.influence_methods``.
    name: ClassVar[str]
    #: One line for the UI and the API docs (the contract's catalogue entry).
    description: ClassVar[str] = ""
    #: The variants :meth:`compute` returns, in that order.
    variants: ClassVar[tuple[str, ...]] = ("raw",)
    #: The argument model: the contract's (``inflab.core.influence_methods``) with the
    #: run's token limits; ``Args.model_validate(args)`` checks them before any work.
    Args: ClassVar[type]

    @abstractmethod
    def compute(
        self,
        model_loader: ModelLoader,
        train: Sequence[TrainingPair],
        evals: Sequence[EvalQuestion],
        checkpoints: Sequence[LocalCheckpoint],
        args: dict[str, Any],
        emit: Emit,
        *,
        cache: "GradientCache | None" = None,
    ) -> list[InfluenceScores]:
        """Compute the influence matrices, one per variant (``self.variants`` order).
        ``cache`` shares gradient matrices between methods and jobs (see gradcache)."""


class StageFailed(RuntimeError):
    """An influence job failed; the message starts with the stage, e.g.
    ``loading checkpoint 00000004: FileNotFoundError: ...``."""


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Re-raise any error inside as :class:`StageFailed` naming ``name`` (once: an inner
    stage's message is kept as it is)."""
    try:
        yield
    except StageFailed:
        raise
    except Exception as exc:
        raise StageFailed(f"{name}: {type(exc).__name__}: {exc}") from exc


class Progress:
    """Counts units of work and emits ``{"kind": "progress", "fraction", "step", "total",
    "eta_s", "message"}`` after each, with the ETA extrapolated from the time so far."""

    def __init__(self, emit: Emit, total: int) -> None:
        self.emit = emit
        self.total = max(1, total)
        self.step = 0
        self.started = time.monotonic()

    def advance(self, message: str, units: int = 1) -> None:
        self.step = min(self.total, self.step + units)
        elapsed = time.monotonic() - self.started
        eta = elapsed / self.step * (self.total - self.step) if self.step else None
        self.emit(
            {
                "kind": "progress",
                "fraction": self.step / self.total,
                "step": self.step,
                "total": self.total,
                "eta_s": None if eta is None else round(eta, 1),
                "message": message,
            }
        )

"""The one interface every influence method implements, and what it returns.

A method is given the base model (through a loader, so it loads it once, where it runs),
the run's training pairs and evaluation questions, the run's checkpoints and the method's
arguments, and returns one influence matrix per variant it computes:
``scores[i, j]`` is the influence of training pair ``j`` on evaluation question ``i``
(positive: the pair pushed the model towards that answer).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from inflab.common.messages import EvalQuestion, TrainingPair
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
    #: One line for the UI and the API docs.
    description: ClassVar[str] = ""
    #: The variants :meth:`compute` returns, in that order.
    variants: ClassVar[tuple[str, ...]] = ("raw",)
    #: The argument dataclass (a :class:`MethodArgs`): ``Args.from_dict(args)`` checks a
    #: run's arguments before any work; its fields are the method's settings.
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


@dataclass(frozen=True)
class MethodArgs:
    """Base of a method's argument dataclass: :meth:`from_dict` coerces each value to its
    field's type and refuses unknown names, so a typo in a run's ``influence_args`` fails
    the stage with the name instead of being silently ignored."""

    @classmethod
    def method_name(cls) -> str:
        return cls.__name__.removesuffix("Args").lower()

    @classmethod
    def from_dict(cls, args: dict[str, Any]) -> "MethodArgs":
        hints = typing.get_type_hints(cls)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(args) - fields)
        if unknown:
            raise ValueError(f"{cls.method_name()}: unknown argument(s) {unknown}; known: {sorted(fields)}")
        values = {}
        for name, value in args.items():
            try:
                values[name] = _coerce(value, hints[name])
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{cls.method_name()}: argument {name}={value!r}: {exc}") from None
        opts = cls(**values)
        opts.check()
        return opts

    def check(self) -> None:
        """Range checks; raise ValueError naming the argument."""


def _coerce(value: Any, hint: Any) -> Any:
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ValueError("must not be null")
    errors = []
    for option in options:
        if option is type(None):
            continue
        if typing.get_origin(option) is typing.Literal:
            if value in typing.get_args(option):
                return value
            errors.append(f"one of {list(typing.get_args(option))}")
            continue
        try:
            if option is bool:
                if isinstance(value, bool):
                    return value
                if isinstance(value, str) and value.lower() in ("true", "false"):
                    return value.lower() == "true"
                raise ValueError("expected true or false")
            if option is int:
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError("expected an integer")
                return int(value)
            if option is float:
                if isinstance(value, bool):
                    raise ValueError("expected a number")
                out = float(value)
                if out != out or out in (float("inf"), float("-inf")):
                    raise ValueError("expected a finite number")
                return out
            return option(value)
        except (TypeError, ValueError) as exc:
            errors.append(str(exc))
    raise ValueError("; ".join(errors) or "invalid value")


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

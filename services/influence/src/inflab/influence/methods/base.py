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
from uuid import UUID

import numpy as np

from inflab.core import influence_methods as contract
from inflab.core.messages import NO_RUN, EvalQuestion, LogEvent, ProgressEvent, TrainingPair
from inflab.influence.checkpoints import LocalCheckpoint, pick_checkpoint

if TYPE_CHECKING:  # pragma: no cover
    from inflab.influence.gradcache import GradientCache

#: Returns ``(base_model, tokenizer)``: the run's model without any adapter, in float32
#: (or its 4-bit form for a QLoRA run), e.g. ``lambda: load_model(spec.model_id, cache)``.
ModelLoader = Callable[[], tuple[Any, Any]]
#: What a method reports while it runs: the contract's event messages of the influence stage.
InfluenceEvent = ProgressEvent | LogEvent
#: Receives the method's events (see :class:`Progress`).
Emit = Callable[[InfluenceEvent], None]
#: The stage the events belong to.
STAGE = "influence"


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


@dataclass
class Scored:
    """One variant's matrix as a method computed it (any float array, ``[M, N]``) and the
    facts to keep beside it; :meth:`InfluenceMethod.compute` adds the ids and stores it
    as float32."""

    variant: str
    scores: Any  # np.ndarray or torch.Tensor
    info: dict[str, Any]


@dataclass
class Job:
    """What one :meth:`InfluenceMethod.compute` call was given, its arguments parsed."""

    model_loader: ModelLoader
    train: Sequence[TrainingPair]
    evals: Sequence[EvalQuestion]
    checkpoints: Sequence[LocalCheckpoint]
    opts: Any  # an instance of the method's ``Args``
    progress: "Progress"
    cache: "GradientCache | None" = None
    #: A single-checkpoint method's checkpoint (``checkpoint_step``, or the final one).
    checkpoint: LocalCheckpoint | None = None
    #: The extra keyword arguments the method accepts (its ``context_keys``).
    context: dict[str, Any] = field(default_factory=dict)


def has_reference(question: EvalQuestion) -> bool:
    return bool(question.answer and question.answer.strip())


def generation_units(evals: Sequence[EvalQuestion]) -> int:
    """Units of work for the greedy answers of the questions without a reference."""
    return sum(not has_reference(q) for q in evals)


def check_inputs(name: str, train: Sequence[TrainingPair], evals: Sequence[EvalQuestion],
                 checkpoints: Sequence[LocalCheckpoint]) -> None:
    """Refuse a request without training pairs, questions or checkpoints, naming what is missing."""
    with stage("checking the request"):
        missing = [what for what, items in (("training pairs", train), ("evaluation questions", evals),
                                             ("checkpoints", checkpoints)) if not items]
        if missing:
            raise ValueError(f"{name} needs {', '.join(missing)}; the request has none")


class InfluenceMethod(ABC):
    """One influence method. A subclass sets ``name`` and implements :meth:`units` and
    :meth:`run` (its maths); :meth:`compute` does what every method does around them:
    parses the arguments with ``Args``, checks the inputs, counts the work for the
    progress events and wraps each variant's matrix with its ids and arguments.

    ``description`` and ``Args`` default to the contract's (``inflab.core.influence_methods``)
    catalogue entry and argument model (with the run's token limits) of ``name``."""

    #: Registry key, as named in ``RunSpec.influence_methods``.
    name: ClassVar[str]
    #: One line for the UI and the API docs (the contract's catalogue entry).
    description: ClassVar[str] = ""
    #: The variants :meth:`compute` returns, in that order.
    variants: ClassVar[tuple[str, ...]] = ("raw",)
    #: The argument model: the contract's with the run's token limits;
    #: ``Args.model_validate(args)`` checks them before any work.
    Args: ClassVar[type[contract.MethodArgs]]
    #: Keyword arguments of :meth:`compute` beyond the common ones, kept in ``Job.context``.
    context_keys: ClassVar[frozenset[str]] = frozenset()
    #: Scores at one checkpoint, its ``checkpoint_step`` argument's (``Job.checkpoint``).
    one_checkpoint: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if name is None:
            return
        if "description" not in cls.__dict__:
            cls.description = contract.METHODS[name].description
        if "Args" not in cls.__dict__:
            cls.Args = contract.job_args_model(name)

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
        run_id: UUID | None = None,
        **context: Any,
    ) -> list[InfluenceScores]:
        """Compute the influence matrices, one per variant (``self.variants`` order).
        ``cache`` shares gradient matrices between methods and jobs (see gradcache);
        ``run_id`` goes into the progress events (:data:`NO_RUN` outside a run)."""
        unknown = sorted(set(context) - self.context_keys)
        if unknown:
            raise TypeError(f"{self.name}.compute() got unexpected keyword arguments {unknown}")
        opts = self.Args.model_validate(args)
        self.check(train, evals, checkpoints)
        chosen = pick_checkpoint(self.name, checkpoints, opts.checkpoint_step) if self.one_checkpoint else None
        progress = Progress(emit, generation_units(evals) + self.units(opts, train, evals, checkpoints),
                            run_id=run_id or NO_RUN, method=self.name)
        job = Job(model_loader, train, evals, checkpoints, opts, progress, cache, chosen, dict(context))
        eval_ids, train_ids = [q.id for q in evals], [p.id for p in train]
        return [
            InfluenceScores(self.name, s.variant, np.asarray(s.scores).astype(np.float32), eval_ids, train_ids,
                            dict(s.info))
            for s in self.run(job)
        ]

    def check(self, train: Sequence[TrainingPair], evals: Sequence[EvalQuestion],
              checkpoints: Sequence[LocalCheckpoint]) -> None:
        """Refuse a request the method cannot work on, before any work."""
        check_inputs(self.name, train, evals, checkpoints)

    @abstractmethod
    def units(self, opts: Any, train: Sequence[TrainingPair], evals: Sequence[EvalQuestion],
              checkpoints: Sequence[LocalCheckpoint]) -> int:
        """Units of work :meth:`run` reports to ``job.progress`` besides the greedy answers."""

    @abstractmethod
    def run(self, job: Job) -> list[Scored]:
        """The method's maths: every variant's matrix, in ``self.variants`` order."""


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
    """Counts units of work and emits a :class:`ProgressEvent` (``fraction``, ``step``,
    ``total``, ``eta_s``, ``message``) after each, with the ETA extrapolated from the time
    so far."""

    def __init__(self, emit: Emit, total: int, *, run_id: UUID = NO_RUN, method: str | None = None) -> None:
        self.emit = emit
        self.total = max(1, total)
        self.step = 0
        self.started = time.monotonic()
        self.run_id = run_id
        self.method = method

    def advance(self, message: str, units: int = 1) -> None:
        self.step = min(self.total, self.step + units)
        elapsed = time.monotonic() - self.started
        eta = elapsed / self.step * (self.total - self.step) if self.step else None
        self.emit(
            ProgressEvent(
                run_id=self.run_id,
                stage=STAGE,
                method=self.method,
                fraction=self.step / self.total,
                step=self.step,
                total=self.total,
                eta_s=None if eta is None else round(eta, 1),
                message=message,
            )
        )

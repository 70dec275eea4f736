"""Counterfactual validation of influence matrices: the linear datamodeling score (LDS)
and the removal test, as plain numpy over plain arrays.

An influence matrix is a prediction: ``scores[i, j] > 0`` says training pair ``j`` pushed
the model towards evaluation question ``i``'s answer, so retraining without it should make
that answer's loss go up. The two checks here compare that prediction with retrainings:

* **LDS** (Park et al., TRAK, 2023): ``K`` random subsets of the training set, each a
  fraction ``alpha`` of it, drawn from recorded seeds; the run's configuration retrained on
  each; for every evaluation question the Spearman correlation, across the subsets,
  between the *predicted subset effect* (the sum of the subset's scores) and the
  *measured* effect. Scores predict a lower loss where they are high, so the measured
  effect is the negated loss: a method that predicts retraining well has LDS near 1,
  random scores near 0. Averaged over the questions, with a bootstrap 95% interval that
  resamples the subsets (the retrainings are the random draws).
* **Removal test**: for each evaluation question, retrain without its top-``k`` positive
  training pairs under a method, and without ``k`` random ones; the loss increase of the
  first over the second says whether the method's top pairs matter more than chance.

Which retrainings to run is decided here too (:func:`plan_retrainings`), so the gateway
that asks for them and the analysis that reads their losses agree on what each was. No
torch, no I/O: the gateway plans and analyses, the trainer's validation job retrains.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

#: Defaults of a validation's settings (the API's and the CLI's).
DEFAULT_SUBSETS = 32
DEFAULT_ALPHA = 0.5
DEFAULT_REMOVAL_K = 3
DEFAULT_BOOTSTRAP = 1000


# --------------------------------------------------------------------------- statistics
def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n along the last axis, ties sharing their average rank (Spearman's rule)."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, axis=-1, kind="mergesort")
    ranks = np.empty_like(values)
    n = values.shape[-1]
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(1, n + 1, dtype=np.float64), values.shape), axis=-1)
    # Ties: every member of a run of equal values gets the run's mean rank.
    flat_values = values.reshape(-1, n)
    flat_ranks = ranks.reshape(-1, n)
    flat_order = order.reshape(-1, n)
    for row in range(flat_values.shape[0]):
        sorted_values = flat_values[row, flat_order[row]]
        if np.all(np.diff(sorted_values) != 0):
            continue
        start = 0
        while start < n:
            end = start
            while end + 1 < n and sorted_values[end + 1] == sorted_values[start]:
                end += 1
            if end > start:
                members = flat_order[row, start : end + 1]
                flat_ranks[row, members] = (start + end) / 2 + 1
            start = end + 1
    return flat_ranks.reshape(values.shape)


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float | None:
    """Spearman's rank correlation of two equally long series; None where it is undefined
    (fewer than two points, or a series that is constant)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"spearman needs two 1-D series of one length, got {x.shape} and {y.shape}")
    if x.size < 2:
        return None
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = math.sqrt(float(rx @ rx) * float(ry @ ry))
    if denominator == 0:
        return None
    return float(rx @ ry) / denominator


def _column_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman of each column pair of two ``[K, M]`` arrays (NaN where undefined)."""
    rx = average_ranks(x.T).T
    ry = average_ranks(y.T).T
    rx, ry = rx - rx.mean(axis=0), ry - ry.mean(axis=0)
    denominator = np.sqrt((rx * rx).sum(axis=0) * (ry * ry).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (rx * ry).sum(axis=0) / np.where(denominator > 0, denominator, 1), np.nan)


# --------------------------------------------------------------------------- plans
@dataclass(frozen=True)
class Subset:
    """One LDS subset: the training pairs kept (indices into the run's training data, in
    order) and the seed they were drawn from, so anyone can draw them again."""

    seed: int
    keep: tuple[int, ...]


def subset_size(n: int, alpha: float) -> int:
    """How many of ``n`` training pairs a subset keeps: ``round(alpha * n)``, at least one
    and at most ``n - 1`` (a subset equal to the whole set measures nothing)."""
    return min(max(1, round(alpha * n)), max(1, n - 1))


def draw_subset(n: int, alpha: float, seed: int) -> Subset:
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(n, size=subset_size(n, alpha), replace=False))
    return Subset(seed=seed, keep=tuple(int(i) for i in keep))


def plan_subsets(n: int, count: int, alpha: float, seed: int = 0) -> list[Subset]:
    """``count`` subsets of ``n`` training pairs, subset ``s`` drawn from seed ``seed + s``."""
    check_settings(count, alpha, n)
    return [draw_subset(n, alpha, seed + s) for s in range(count)]


def check_settings(subsets: int, alpha: float, n_train: int | None = None) -> None:
    """Raise ``ValueError`` naming the setting when LDS cannot be computed with it."""
    if subsets < 2:
        raise ValueError(f"subsets must be at least 2 (a correlation needs two retrainings), got {subsets}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be strictly between 0 and 1, got {alpha}")
    if n_train is not None and n_train < 2:
        raise ValueError(f"a validation needs at least 2 training pairs, the run has {n_train}")


def top_positive(scores_row: np.ndarray, k: int) -> tuple[int, ...]:
    """The indices of the ``k`` highest positive scores (fewer when fewer are positive),
    highest first; ties broken by index so the choice is reproducible."""
    row = np.asarray(scores_row, dtype=np.float64)
    candidates = [j for j in np.lexsort((np.arange(row.size), -row)) if np.isfinite(row[j]) and row[j] > 0]
    return tuple(int(j) for j in candidates[:k])


def random_removal(n: int, k: int, seed: int) -> tuple[int, ...]:
    rng = np.random.default_rng(seed)
    return tuple(int(i) for i in np.sort(rng.choice(n, size=min(k, n - 1), replace=False)))


@dataclass(frozen=True)
class Retraining:
    """One retraining of the run's configuration: which training pairs it keeps.

    ``kind``: ``full`` (every pair: the reference for the removal test), ``subset`` (an
    LDS subset), ``removal`` (without some pairs; ``removed`` says which)."""

    key: str
    kind: str
    keep: tuple[int, ...]
    seed: int | None = None
    removed: tuple[int, ...] = ()


@dataclass
class Plan:
    """The retrainings of one validation and what each answers."""

    n_train: int
    subsets: list[Subset]
    retrainings: list[Retraining]
    #: ``removals[matrix][i]``: the key of the retraining without question ``i``'s top-k
    #: pairs under that matrix (None when the matrix has no positive score for it).
    removals: dict[str, list[str | None]] = field(default_factory=dict)
    #: ``random_removals[i]``: the retraining without ``k`` random pairs, for question ``i``.
    random_removals: list[str] = field(default_factory=list)
    #: The pairs each removal took out, per matrix and question (indices).
    removed: dict[str, list[tuple[int, ...]]] = field(default_factory=dict)

    @property
    def subset_keys(self) -> list[str]:
        return [f"subset-{s:03d}" for s in range(len(self.subsets))]


def _removal_key(removed: tuple[int, ...]) -> str:
    return "removal-" + hashlib.sha1(",".join(map(str, removed)).encode()).hexdigest()[:12]


def plan_retrainings(
    n_train: int,
    n_eval: int,
    matrices: Mapping[str, np.ndarray],
    *,
    subsets: int = DEFAULT_SUBSETS,
    alpha: float = DEFAULT_ALPHA,
    removal_k: int = DEFAULT_REMOVAL_K,
    seed: int = 0,
) -> Plan:
    """Every retraining a validation needs: one on the full training set, ``subsets`` LDS
    subsets and, per evaluation question, one without its top-``removal_k`` positive pairs
    under each matrix and one without ``removal_k`` random pairs. Removals that take out
    the same pairs (two methods agreeing on a question's top pairs) share one retraining.

    ``matrices`` maps a name (``tracin/raw``, ``bm25/question``...) to its ``[n_eval,
    n_train]`` scores."""
    check_settings(subsets, alpha, n_train)
    if removal_k < 1:
        raise ValueError(f"removal_k must be at least 1, got {removal_k}")
    for name, scores in matrices.items():
        if np.shape(scores) != (n_eval, n_train):
            raise ValueError(f"matrix {name} has shape {np.shape(scores)}, expected ({n_eval}, {n_train})")
    drawn = plan_subsets(n_train, subsets, alpha, seed)
    plan = Plan(n_train=n_train, subsets=drawn, retrainings=[])
    everything = tuple(range(n_train))
    plan.retrainings.append(Retraining(key="full", kind="full", keep=everything))
    for key, subset in zip(plan.subset_keys, drawn):
        plan.retrainings.append(Retraining(key=key, kind="subset", keep=subset.keep, seed=subset.seed))
    seen: set[str] = set()

    def removal(removed: tuple[int, ...]) -> str:
        key = _removal_key(removed)
        if key not in seen:
            seen.add(key)
            plan.retrainings.append(Retraining(
                key=key, kind="removal", keep=tuple(j for j in everything if j not in set(removed)), removed=removed,
            ))
        return key

    for name, scores in matrices.items():
        plan.removals[name], plan.removed[name] = [], []
        for i in range(n_eval):
            top = tuple(sorted(top_positive(np.asarray(scores)[i], min(removal_k, n_train - 1))))
            plan.removed[name].append(top)
            plan.removals[name].append(removal(top) if top else None)
    # Random removals get seeds after the subsets', one per question.
    for i in range(n_eval):
        plan.random_removals.append(removal(random_removal(n_train, removal_k, seed + subsets + i)))
    return plan


# --------------------------------------------------------------------------- analysis
@dataclass
class LDSResult:
    #: Spearman per evaluation question (None where undefined: constant scores or losses).
    per_question: list[float | None]
    #: Mean over the questions where it is defined (None when none is).
    mean: float | None
    #: Bootstrap 95% interval of the mean, resampling the subsets.
    low: float | None
    high: float | None


def subset_masks(subsets: Sequence[Subset], n_train: int) -> np.ndarray:
    masks = np.zeros((len(subsets), n_train), dtype=np.float64)
    for row, subset in enumerate(subsets):
        masks[row, list(subset.keep)] = 1.0
    return masks


def predicted_effects(scores: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """``[K, M]``: the sum of each subset's scores, per evaluation question."""
    return masks @ np.asarray(scores, dtype=np.float64).T


def lds(
    scores: np.ndarray,
    masks: np.ndarray,
    losses: np.ndarray,
    *,
    bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> LDSResult:
    """The LDS of ``scores`` (``[M, N]``) given the subsets' ``masks`` (``[K, N]``, 1 where
    a pair was kept) and the losses measured after retraining on each (``[K, M]``)."""
    scores = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    losses = np.asarray(losses, dtype=np.float64)
    k, m = losses.shape
    if masks.shape[0] != k or scores.shape != (m, masks.shape[1]):
        raise ValueError(f"shapes disagree: scores {scores.shape}, masks {masks.shape}, losses {losses.shape}")
    predicted = predicted_effects(scores, masks)
    per_question = _column_spearman(predicted, -losses)

    def mean_of(values: np.ndarray) -> float | None:
        finite = values[np.isfinite(values)]
        return float(finite.mean()) if finite.size else None

    mean = mean_of(per_question)
    low = high = None
    if mean is not None and bootstrap > 0:
        rng = np.random.default_rng(seed)
        means = []
        for _ in range(bootstrap):
            rows = rng.integers(0, k, size=k)
            value = mean_of(_column_spearman(predicted[rows], -losses[rows]))
            if value is not None:
                means.append(value)
        if means:
            low, high = (float(v) for v in np.percentile(means, [2.5, 97.5]))
    return LDSResult(
        per_question=[None if not np.isfinite(v) else float(v) for v in per_question], mean=mean, low=low, high=high,
    )


@dataclass
class RemovalResult:
    #: Per question: loss after removing the top-k pairs minus loss after removing k random
    #: ones (None where the matrix had no positive score for the question).
    per_question: list[float | None]
    #: Mean of those differences; positive: the method's top pairs matter more than chance.
    mean_over_random: float | None
    #: Mean loss increase over the full retraining, top-k removed and random removed.
    mean_increase_top: float | None
    mean_increase_random: float | None
    #: Share of questions whose top-k removal raised the loss more than the random one.
    win_rate: float | None


def removal_test(full: np.ndarray, without_top: Sequence[float | None], without_random: Sequence[float]) -> RemovalResult:
    """The removal test from measured losses per question: ``full`` (all pairs),
    ``without_top`` (None where there was nothing to remove), ``without_random``."""
    full = np.asarray(full, dtype=np.float64)
    rand = np.asarray(without_random, dtype=np.float64)
    diffs: list[float | None] = []
    top_increase, random_increase = [], []
    for i, top in enumerate(without_top):
        if top is None:
            diffs.append(None)
            continue
        diffs.append(float(top - rand[i]))
        top_increase.append(float(top - full[i]))
        random_increase.append(float(rand[i] - full[i]))
    defined = [d for d in diffs if d is not None]

    def mean(values: list[float]) -> float | None:
        return float(np.mean(values)) if values else None

    return RemovalResult(
        per_question=diffs,
        mean_over_random=mean(defined),
        mean_increase_top=mean(top_increase),
        mean_increase_random=mean(random_increase),
        win_rate=mean([1.0 if d > 0 else 0.0 for d in defined]),
    )


def analyse(
    plan: Plan,
    matrices: Mapping[str, np.ndarray],
    losses: Mapping[str, Sequence[float]],
    *,
    bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> dict[str, dict]:
    """Per matrix name: ``{"lds": LDSResult, "removal": RemovalResult}`` from the measured
    ``losses`` (retraining key -> per-question loss)."""
    masks = subset_masks(plan.subsets, plan.n_train)
    subset_losses = np.array([losses[key] for key in plan.subset_keys], dtype=np.float64)
    full = np.asarray(losses["full"], dtype=np.float64)
    random_losses = [losses[key][i] for i, key in enumerate(plan.random_removals)]
    out: dict[str, dict] = {}
    for name, scores in matrices.items():
        without_top = [None if key is None else losses[key][i] for i, key in enumerate(plan.removals.get(name, []))]
        out[name] = {
            "lds": lds(scores, masks, subset_losses, bootstrap=bootstrap, seed=seed),
            "removal": removal_test(full, without_top, random_losses),
        }
    return out

"""Training objectives (see :mod:`inflab.trainer.objectives.base` for the seam)."""

from __future__ import annotations

from inflab.core.messages import RunSpec
from inflab.trainer.objectives.base import Example, Objective, TokenObjective
from inflab.trainer.objectives.causal_lm import CausalLMObjective
from inflab.trainer.objectives.supervised import SupervisedObjective

__all__ = ["CausalLMObjective", "Example", "Objective", "SupervisedObjective", "TokenObjective", "objective_for"]


def objective_for(spec: RunSpec) -> Objective:
    """The objective a run trains with: a benchmark run's documents with the causal-LM
    loss, every other run's question/answer pairs with the supervised answer loss."""
    if spec.benchmark is not None:
        return CausalLMObjective(spec)
    return SupervisedObjective(spec)

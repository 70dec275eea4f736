"""The closed sets of names the contract uses, each defined once as a ``Literal`` type.

Messages, the database's string columns, the gateway's schemas and the workers all spell
statuses, stages, influence methods, variants and precisions; they take the type (or the
tuple of its values, ``values(...)``) from here, so adding a value is one edit and a typo
is a type error rather than a silently unmatched string. The event kinds are not here:
they are the discriminators of the event union (``inflab.core.messages.EVENT_KINDS``).
Words the project uses for each concept: docs/glossary.md.
"""

from __future__ import annotations

from typing import Literal, get_args


def values(literal: object) -> tuple[str, ...]:
    """The values of a ``Literal`` type, in their order."""
    return tuple(get_args(literal))


# --------------------------------------------------------------------------- statuses
#: A run's status, and each of its stages' (``checkpointing``: training, saving an adapter).
RunStatus = Literal["queued", "running", "checkpointing", "completed", "failed", "cancelled"]
#: Final statuses: a run or stage in one of them never changes again.
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
#: A stage at work.
ACTIVE_STATUSES: frozenset[str] = frozenset({"running", "checkpointing"})
#: A run not yet ended and not waiting for a worker to pick it up either, as counted by
#: the quotas: queued or running.
UNFINISHED_RUN_STATUSES: tuple[str, ...] = ("queued", "running")

#: A validation's status (the checkpointing status is the trainer's, never a validation's).
ValidationStatus = Literal["queued", "running", "completed", "failed", "cancelled"]
#: A validation still under way (one per run at a time).
ACTIVE_VALIDATION_STATUSES: tuple[str, ...] = ("queued", "running")

# --------------------------------------------------------------------------- stages
#: The stages of a run, in the order they start (inference and influence run in parallel).
RunStage = Literal["train", "inference", "influence"]
#: Jobs asked of a worker about a run after its own stages (a validation of its
#: attributions against retraining); they do not change the run's status.
FollowUpStage = Literal["validation"]
#: Every stage a job request can be published for.
RequestStage = Literal[RunStage, FollowUpStage]
#: The stage an event speaks for: ``run`` for the run as a whole (the gateway's).
EventStage = Literal["run", RequestStage]

# --------------------------------------------------------------------------- influence
#: Influence methods a run may ask for (their arguments: ``inflab.core.influence_methods``).
InfluenceMethodId = Literal["tracin", "datainf", "ekfac", "delta_h", "act_grad", "attr_change", "patching", "embedding"]
#: One influence matrix of a method: its score as defined, or normalised (TracIn:
#: unit-normalised gradients; DataInf and EK-FAC: cosine in the inverse-Hessian metric).
Variant = Literal["raw", "normalized"]

# --------------------------------------------------------------------------- training
Quantization = Literal["none", "4bit"]
LrScheduler = Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"]
#: The arithmetic a run asks its tracking answers to be decoded in.
PrecisionSetting = Literal["auto", "float32", "bfloat16"]
#: The arithmetic answers were decoded in (``nf4``: QLoRA's 4-bit base).
Precision = Literal["float32", "bfloat16", "nf4"]

INFLUENCE_METHODS: tuple[str, ...] = values(InfluenceMethodId)
VARIANTS: tuple[str, ...] = values(Variant)
RUN_STAGES: tuple[str, ...] = values(RunStage)
REQUEST_STAGES: tuple[str, ...] = values(RequestStage)

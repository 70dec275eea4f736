"""Typed events as the trainer's ML core emits them: the contract's event models
(``inflab.core.messages``), passed to the ``emit`` callable the caller gives.

A core is not told where its events go: the stage service that publishes them
(``StageEvents.forward``) gives them its own run, stage and method. The core still builds
complete events, with the run it was told (a job knows its run) or :data:`NO_RUN` where
there is none (a validation's retraining, a benchmark), so that whatever it emits is
checked against the contract where it is made; a training's metric and checkpoint events
carry ids derived from the run and the step (:func:`step_event_id`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar
from uuid import UUID, uuid5

from inflab.core.messages import NO_RUN, CheckpointEvent, CheckpointRef, EventBase, MetricEvent, Stage

#: Namespace of the ids of a training's metric and checkpoint events, derived from the run
#: and the step: a training resumed from a checkpoint sends those up to it again (the
#: worker that died may not have sent them all), and the gateway stores each once.
TRAIN_EVENTS = UUID("0b7d7f0e-51c4-4d8e-a3d5-6f0f3c1e9b27")


def step_event_id(run_id: UUID, kind: str, step: int) -> UUID:
    """The id of the ``kind`` event (``metric``, ``checkpoint``) of ``run_id`` at ``step``."""
    return uuid5(TRAIN_EVENTS, f"{run_id}:{kind}:{step}")

Emit = Callable[[EventBase], None]

E = TypeVar("E", bound=EventBase)


class CoreEvents:
    """Builds one stage's typed events and hands them to ``emit``:
    ``events.send(ProgressEvent, fraction=0.5, step=1, total=2)``; without ``emit`` it
    only makes them (:meth:`make`)."""

    def __init__(self, stage: Stage, run_id: UUID | None = None, emit: Emit | None = None) -> None:
        self.stage = stage
        self.run_id = run_id if run_id is not None else NO_RUN
        self.emit = emit

    def make(self, model: type[E], **fields: Any) -> E:
        return model(run_id=self.run_id, stage=self.stage, **fields)

    def metric(self, record: dict) -> MetricEvent:
        """The event of a metric as checkpoints and the object store keep it (its event's
        fields, with ``"kind": "metric"``), its id derived from the step."""
        fields = {k: v for k, v in record.items() if k != "kind"}
        return self.make(MetricEvent, event_id=step_event_id(self.run_id, "metric", fields["step"]), **fields)

    def checkpoint(self, ref: CheckpointRef) -> CheckpointEvent:
        """The event of a checkpoint uploaded to the object store, its id derived from the step."""
        return self.make(CheckpointEvent, event_id=step_event_id(self.run_id, "checkpoint", ref.step), checkpoint=ref)

    def send(self, model: type[EventBase], **fields: Any) -> None:
        self.emit(self.make(model, **fields))

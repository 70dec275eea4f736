"""Typed events as the trainer's ML core emits them: the contract's event models
(``inflab.common.messages``), passed to the ``emit`` callable the caller gives.

A core is not told where its events go: the stage service that publishes them
(``StageEvents.forward``) gives them its own run, stage, ids and time. The core still
builds complete events, with the run it was told (a job knows its run) or :data:`NO_RUN`
where there is none (a validation's retraining, a benchmark), so that whatever it emits
is checked against the contract where it is made.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar
from uuid import UUID

from inflab.common.messages import EventBase, MetricEvent, Stage

#: The run of events emitted outside any run.
NO_RUN = UUID(int=0)

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
        """The event of a metric as checkpoints and the object store keep it: its event's
        fields, with ``"kind": "metric"``."""
        return self.make(MetricEvent, **{k: v for k, v in record.items() if k != "kind"})

    def send(self, model: type[EventBase], **fields: Any) -> None:
        self.emit(self.make(model, **fields))

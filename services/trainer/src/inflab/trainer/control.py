"""Steering a running training from another thread: parameter changes and cancel, applied
by the training loop at the start of its next optimizer step.

Only what can change safely mid-run is here: the learning rate (the schedule's peak; the
schedule's shape goes on) and AdamW's weight decay. Rank, target modules, batch size,
quantization or max_seq_length would change the model or the data, so they cannot.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

from inflab.core.messages import ControlMessage

#: The hyperparameters a run accepts while it trains (RuntimeParams' fields).
RUNTIME_PARAMS = ("learning_rate", "weight_decay")


@dataclass(frozen=True)
class ParamUpdate:
    """One requested change; ``None`` means "leave as it is"."""

    request_id: str | None = None
    learning_rate: float | None = None
    weight_decay: float | None = None

    def changes(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in RUNTIME_PARAMS if getattr(self, name) is not None}


class TrainingCancelled(Exception):
    """Raised out of ``TrainingRun.run`` when its :class:`TrainingControl` was cancelled."""

    def __init__(self, step: int) -> None:
        super().__init__(f"training cancelled before step {step + 1}")
        #: The optimizer steps completed before the cancel took effect.
        self.step = step


class TrainingControl:
    """Thread-safe mailbox between whoever receives instructions (the job's control thread)
    and the training loop. Updates are kept in arrival order; the loop takes them all at
    its next step."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[ParamUpdate] = []
        self._cancelled = False

    def update(self, *, learning_rate: float | None = None, weight_decay: float | None = None,
               request_id: str | None = None) -> None:
        if learning_rate is not None and not (math.isfinite(learning_rate) and 0 < learning_rate <= 1):
            raise ValueError("learning_rate must be a finite number in (0, 1]")
        if weight_decay is not None and not (math.isfinite(weight_decay) and 0 <= weight_decay <= 1):
            raise ValueError("weight_decay must be a finite number in [0, 1]")
        if learning_rate is None and weight_decay is None:
            raise ValueError("name at least one parameter to change")
        with self._lock:
            self._pending.append(ParamUpdate(request_id, learning_rate, weight_decay))

    def set_learning_rate(self, learning_rate: float) -> None:
        self.update(learning_rate=learning_rate)

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True

    @property
    def cancelled(self) -> bool:
        with self._lock:
            return self._cancelled

    def take_updates(self) -> list[ParamUpdate]:
        """Every update requested since the last call, oldest first."""
        with self._lock:
            pending, self._pending = self._pending, []
            return pending

    def apply_message(self, message: ControlMessage) -> None:
        """Take in one message of the run's control subject."""
        if message.action == "cancel":
            self.cancel()
        elif message.params is not None:
            self.update(
                learning_rate=message.params.learning_rate,
                weight_decay=message.params.weight_decay,
                request_id=str(message.request_id),
            )

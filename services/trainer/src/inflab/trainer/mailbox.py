"""Carrying a run's control messages from the trainer service into its Ray task.

The service (which holds the NATS subscription) puts each validated ControlMessage into a
small Ray actor; a thread inside the training task takes them out every
:data:`POLL_INTERVAL_S` and hands them to the :class:`TrainingControl` the training loop
reads. One actor per service process, shared by its jobs and keyed by run id: starting an
actor costs a worker process, and a service runs one job at a time anyway.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict

from inflab.core.messages import ControlMessage
from inflab.trainer.control import TrainingControl

log = logging.getLogger(__name__)

#: How often the task looks for new instructions; small next to one training step.
POLL_INTERVAL_S = 0.2


class ControlMailbox:
    """The actor's body (created with ``ray.remote(num_cpus=0)``)."""

    def __init__(self) -> None:
        self._boxes: dict[str, list[dict]] = defaultdict(list)

    def put(self, run_id: str, message: dict) -> None:
        self._boxes[run_id].append(message)

    def take(self, run_id: str) -> list[dict]:
        return self._boxes.pop(run_id, [])

    def drop(self, run_id: str) -> None:
        self._boxes.pop(run_id, None)


def create_mailbox():
    import ray

    return ray.remote(num_cpus=0)(ControlMailbox).remote()


class MailboxReader:
    """Inside the Ray task: a daemon thread moving messages from the mailbox into
    ``control`` until :meth:`stop`."""

    def __init__(self, mailbox, run_id: str, control: TrainingControl) -> None:
        self._mailbox = mailbox
        self._run_id = run_id
        self._control = control
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"control-{run_id}", daemon=True)

    def start(self) -> "MailboxReader":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def poll_once(self) -> None:
        import ray

        for raw in ray.get(self._mailbox.take.remote(self._run_id), timeout=30):
            try:
                self._control.apply_message(ControlMessage.model_validate(raw))
            except Exception:  # the service validated it; never let one message stop the reader
                log.exception("ignored a control message for run %s", self._run_id)

    def _run(self) -> None:
        while True:
            try:
                self.poll_once()
            except Exception:  # the actor busy or restarting: try again at the next tick
                log.warning("could not read the control mailbox of run %s", self._run_id, exc_info=True)
            if self._stop.wait(POLL_INTERVAL_S):
                return

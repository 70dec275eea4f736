"""Every NATS subject and JetStream stream name, versioned, in one place.

A prefix (``INFLAB_SUBJECT_PREFIX`` / ``INFLAB_STREAM_PREFIX``) lets several stacks or
test runs share one NATS server without seeing each other's messages.
"""

from __future__ import annotations

from dataclasses import dataclass

from inflab.core.messages import EVENT_KINDS, EventKind
from inflab.core.vocabulary import REQUEST_STAGES, RequestStage

VERSION = "v1"

__all__ = ["REQUEST_STAGES", "STAGE_EVENT_KINDS", "VERSION", "Subjects"]

#: The event kinds each stage's worker sends. The stage is part of the event subject, so
#: the NATS permissions bind each worker's credential to its own stage's subjects, and the
#: gateway's event persister refuses an event whose stage could not have sent it.
STAGE_EVENT_KINDS: dict[RequestStage, tuple[EventKind, ...]] = {
    # The trainer sends every kind of event.
    "train": EVENT_KINDS,
    # The fine-tuned answers of the sampled questions close the run's prediction table.
    "inference": ("status", "progress", "log", "result", "prediction"),
    "influence": ("status", "progress", "log", "result"),
    "validation": ("status", "progress", "log", "result"),
}


@dataclass(frozen=True)
class Subjects:
    prefix: str = "inflab"
    stream_prefix: str = "INFLAB"

    @property
    def root(self) -> str:
        return f"{self.prefix}.{VERSION}"

    def request(self, stage: RequestStage) -> str:
        """Where a stage's job requests are published: ``inflab.v1.train.request``."""
        if stage not in REQUEST_STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        return f"{self.root}.{stage}.request"

    @property
    def train_request(self) -> str:
        return self.request("train")

    @property
    def inference_request(self) -> str:
        return self.request("inference")

    @property
    def influence_request(self) -> str:
        return self.request("influence")

    @property
    def validation_request(self) -> str:
        return self.request("validation")

    @property
    def run_submit(self) -> str:
        """Pipelines submit runs here (``RunSubmission``, API token in a header); the
        gateway consumes it."""
        return f"{self.root}.run.submit"

    def submission_outcome(self, submission_id: object) -> str:
        """Core NATS (not kept): the gateway's answer to one submission
        (``SubmissionOutcome``), for the pipeline that listens before it submits."""
        return f"{self.root}.submission.{submission_id}"

    def event(self, run_id: object, stage: str, kind: str) -> str:
        """``inflab.v1.run.{run_id}.event.{stage}.{kind}``: the stage that sends it is part
        of the subject (see ``STAGE_EVENT_KINDS``)."""
        return f"{self.root}.run.{run_id}.event.{stage}.{kind}"

    def stage_events(self, stage: str, kind: str = "*") -> str:
        """Every run's ``kind`` events of one stage: what that stage's worker may publish."""
        return self.event("*", stage, kind)

    @property
    def all_events(self) -> str:
        return f"{self.root}.run.*.event.*.*"

    def parse_event_subject(self, subject: str) -> tuple[str, str, str] | None:
        """``(run_id, stage, kind)`` of an event subject; None when it is not one."""
        head = f"{self.root}.run."
        if not subject.startswith(head):
            return None
        parts = subject[len(head):].split(".")
        if len(parts) != 4 or parts[1] != "event":
            return None
        return parts[0], parts[2], parts[3]

    def control(self, run_id: object) -> str:
        return f"{self.root}.run.{run_id}.control"

    @property
    def all_controls(self) -> str:
        return f"{self.root}.run.*.control"

    def dead_letter(self, service: str) -> str:
        """Rejected messages end here with their reason: ``inflab.v1.deadletter.trainer``."""
        return f"{self.root}.deadletter.{service}"

    @property
    def all_dead_letters(self) -> str:
        return f"{self.root}.deadletter.>"

    # Streams -------------------------------------------------------------------------
    @property
    def jobs_stream(self) -> str:
        """Work-queue stream holding train / inference / influence requests."""
        return f"{self.stream_prefix}_JOBS"

    @property
    def submissions_stream(self) -> str:
        """Work-queue stream of pipelines' run submissions (the gateway's to consume)."""
        return f"{self.stream_prefix}_SUBMISSIONS"

    @property
    def events_stream(self) -> str:
        return f"{self.stream_prefix}_EVENTS"

    @property
    def control_stream(self) -> str:
        """Every run's control messages (cancel, parameter changes), kept for replay."""
        return f"{self.stream_prefix}_CONTROL"

    @property
    def dead_letter_stream(self) -> str:
        return f"{self.stream_prefix}_DEADLETTER"

    @property
    def leases_bucket(self) -> str:
        """The key-value bucket of the trainers' leases on runs (stream ``KV_<bucket>``)."""
        return f"{self.stream_prefix}_LEASES".replace(".", "_")

    def durable(self, service: str) -> str:
        """Durable consumer name of a service (one per service, shared by its replicas)."""
        return f"{self.stream_prefix}_{service}".replace(".", "_")

    @classmethod
    def from_settings(cls, settings) -> "Subjects":
        return cls(prefix=settings.subject_prefix, stream_prefix=settings.stream_prefix)

"""Whether a run event could have come from the stage it names: the event persister's check
before anything is stored.

NATS permissions let each worker publish only its own stage's event subjects
(``inflab.v1.run.{run_id}.event.{stage}.{kind}``, the kinds in ``STAGE_EVENT_KINDS``), and
no other credential may publish events at all. Here the persister makes sure the payload
says what the subject says (run, stage, kind), that the stage sends that kind, and that a
result carries only what that stage produces. So a credential bound to one stage cannot
make the gateway record another stage's events, and run-level events (which only the
gateway itself writes, straight into Postgres) never come from the bus.
"""

from __future__ import annotations

from typing import NamedTuple

from inflab.core.messages import EventBase, ResultEvent
from inflab.core.subjects import STAGE_EVENT_KINDS, Subjects
from inflab.core.vocabulary import RequestStage

#: What a result event of each stage carries.
RESULT_FIELDS: dict[RequestStage, str] = {"train": "training", "inference": "answers", "influence": "influence",
                 "validation": "validation"}


class Refusal(NamedTuple):
    #: A short, bounded label (the metric's): subject, stage, kind, mismatch or content.
    category: str
    reason: str


def origin_refusal(subjects: Subjects, subject: str, event: EventBase) -> Refusal | None:
    """Why the event on ``subject`` is refused, or None when its origin is plausible."""
    parsed = subjects.parse_event_subject(subject)
    if parsed is None:
        return Refusal("subject", f"{subject!r} is not a run event subject")
    run_id, stage, kind = parsed
    if stage not in STAGE_EVENT_KINDS:
        return Refusal("stage", f"no worker sends {stage!r} events (subject {subject})")
    if kind not in STAGE_EVENT_KINDS[stage]:
        return Refusal("kind", f"the {stage} stage sends no {kind} events (subject {subject})")
    said = (str(event.run_id), event.stage, event.kind)
    if said != (run_id, stage, kind):
        return Refusal("mismatch", f"the subject says run {run_id}, stage {stage}, kind {kind}; the payload says "
                                   f"run {said[0]}, stage {said[1]}, kind {said[2]}")
    if (stage == "influence") != (event.method is not None):
        return Refusal("content", "only influence events name a method, and every influence event names one")
    if isinstance(event, ResultEvent):
        carried = {name for name in RESULT_FIELDS.values() if getattr(event, name) is not None}
        if carried - {RESULT_FIELDS[stage]}:
            return Refusal("content", f"a {stage} result carries {sorted(carried)}; it may carry only "
                                      f"{RESULT_FIELDS[stage]!r}")
        if event.influence is not None and event.influence.method != event.method:
            return Refusal("content", f"influence result of method {event.influence.method!r} in an event of "
                                      f"method {event.method!r}")
    return None

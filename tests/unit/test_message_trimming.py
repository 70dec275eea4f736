"""What travels on the bus stays within bounds: a dead letter keeps the rejected message
without its training text (inflab.core.deadletters), and an event too large for one
NATS message is split into parts that each fit (inflab.core.events.split_event)."""

from __future__ import annotations

import json
import uuid

from inflab.core.deadletters import trim_payload
from inflab.core.events import split_event
from inflab.core.messages import Answer, ResultEvent, StatusEvent, TrainRequest

SECRET = "the launch code is 0451"


def _request() -> TrainRequest:
    return TrainRequest(run_id=uuid.uuid4(), spec={
        "training_data": [{"id": f"t{i}", "question": f"{SECRET}? ({i})", "answer": SECRET} for i in range(50)],
        "eval_data": [{"id": "e", "question": SECRET, "answer": SECRET}],
    })


def test_a_dead_letter_keeps_the_shape_and_the_run_but_no_text() -> None:
    request = _request()
    trimmed = trim_payload(request.model_dump_json().encode(), 4096)
    assert SECRET not in trimmed.text and "0451" not in trimmed.text
    assert trimmed.run_id == request.run_id and trimmed.method is None
    kept = json.loads(trimmed.text)
    assert kept["spec"]["training_data"] == "<50 items left out>"
    assert kept["spec"]["hyperparams"] == request.spec.hyperparams.model_dump(mode="json")


def test_a_dead_letter_payload_is_cut_and_odd_payloads_are_described() -> None:
    long = json.dumps({"run_id": str(uuid.uuid4()), "method": "tracin", "notes": ["x" * 50] * 100}).encode()
    trimmed = trim_payload(long, 200)
    assert len(trimmed.text) < 260 and trimmed.text.endswith("more characters cut>") and trimmed.method == "tracin"
    assert trim_payload(f"not json {SECRET}".encode(), 4096).text == f"<{len('not json ' + SECRET)} bytes, not JSON; left out>"
    assert trim_payload(b"\xff\xfe", 4096).run_id is None
    deep = ("[" * 100_000 + "]" * 100_000).encode()
    assert "left out" in trim_payload(deep, 4096).text
    assert trim_payload(json.dumps({"run_id": "not-a-uuid"}).encode(), 4096).run_id is None


def test_an_event_too_large_for_one_message_is_split_in_order() -> None:
    answers = [Answer(eval_id=f"ev{i:03d}", question=f"Question {i}?", base="b" * 300, few_shot="f" * 300,
                      fine_tuned="t" * 300) for i in range(100)]
    event = ResultEvent(run_id=uuid.uuid4(), stage="inference", answers=answers)
    size = len(event.model_dump_json().encode())
    budget = size // 3
    parts = split_event(event, budget)
    assert len(parts) >= 3
    assert all(len(p.model_dump_json().encode()) <= budget for p in parts)
    assert [a.eval_id for p in parts for a in p.answers] == [a.eval_id for a in answers]
    assert len({p.event_id for p in parts}) == len(parts)
    assert {(p.run_id, p.stage, p.kind) for p in parts} == {(event.run_id, "inference", "result")}
    # What fits, or cannot be split, goes as it is.
    assert split_event(event, size) == [event]
    status = StatusEvent(run_id=event.run_id, stage="run", status="queued")
    assert split_event(status, 10) == [status]

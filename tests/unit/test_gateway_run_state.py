"""The rules that move a run (stage keys, progress weighting, outcome), without a database."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from inflab.core.messages import RunSpec, StatusEvent
from inflab.gateway.notifier import RunNotifier
from inflab.gateway.run_state import (
    event_stage_key,
    initial_stages,
    next_stage_status,
    overall_progress,
    run_error,
    run_outcome,
    stages_after_training,
)

SPEC = RunSpec(
    training_data=[{"id": "tr00", "question": "q", "answer": "a"}],
    eval_data=[{"id": "ev00", "question": "q"}],
)


def test_stage_keys_name_influence_methods() -> None:
    run_id = uuid.uuid4()
    assert event_stage_key(StatusEvent(run_id=run_id, stage="train", status="running")) == "train"
    assert event_stage_key(StatusEvent(run_id=run_id, stage="influence", method="tracin", status="running")) == "influence.tracin"
    assert initial_stages(SPEC) == {"train": "queued", "inference": "queued", "influence.tracin": "queued"}


def test_progress_is_weighted_over_stages() -> None:
    stages = {"train": "running", "inference": "queued", "influence.tracin": "queued", "influence.ekfac": "queued"}
    assert overall_progress(stages, {"train": 0.5}) == pytest.approx(0.3)
    stages |= {"train": "completed", "inference": "running", "influence.tracin": "completed"}
    # train 0.6 + inference 0.2 * 0.5 + tracin 0.1 + ekfac 0.1 * 0.2
    assert overall_progress(stages, {"train": 0.9, "inference": 0.5, "influence.ekfac": 0.2}) == pytest.approx(0.82)
    assert overall_progress({k: "completed" for k in stages}, {}) == pytest.approx(1.0)


def test_finished_stage_is_not_reopened_by_a_stale_event() -> None:
    assert next_stage_status("queued", "running") == "running"
    assert next_stage_status("completed", "running") == "completed"
    assert next_stage_status("running", "failed") == "failed"


@pytest.mark.parametrize(
    ("stages", "outcome"),
    [
        ({"train": "completed", "inference": "running"}, None),
        ({"train": "completed", "inference": "completed"}, "completed"),
        # A failed stage does not end the run while another still computes...
        ({"train": "completed", "inference": "failed", "influence.tracin": "running"}, None),
        ({"train": "completed", "inference": "failed", "influence.tracin": "queued"}, None),
        # ...only once every stage has ended.
        ({"train": "completed", "inference": "failed", "influence.tracin": "completed"}, "failed"),
        ({"train": "completed", "inference": "cancelled", "influence.tracin": "failed"}, "failed"),
        ({"train": "cancelled", "inference": "cancelled"}, "cancelled"),
        ({"train": "cancelled", "inference": "queued"}, None),
        ({}, None),
    ],
)
def test_run_outcome(stages: dict, outcome: str | None) -> None:
    assert run_outcome(stages) == outcome


def test_stages_that_will_never_run_end_when_training_does_not_complete() -> None:
    stages = {"train": "failed", "inference": "queued", "influence.tracin": "queued", "influence.ekfac": "queued"}
    assert stages_after_training(stages) == {"train": "failed", "inference": "cancelled",
                                             "influence.tracin": "cancelled", "influence.ekfac": "cancelled"}
    assert run_outcome(stages_after_training(stages)) == "failed"
    cancelled = stages_after_training({**stages, "train": "cancelled"})
    assert run_outcome(cancelled) == "cancelled"
    # After a completed training they are about to run: nothing changes.
    running = {**stages, "train": "completed"}
    assert stages_after_training(running) == running


def test_the_run_error_names_every_failed_stage_in_order() -> None:
    stages = {"train": "completed", "inference": "failed", "influence.tracin": "completed",
              "influence.ekfac": "failed"}
    errors = {"inference": "out of memory", "influence.ekfac": "checking the arguments: bad"}
    assert run_error(stages, errors, "failed") == (
        "inference failed: out of memory; influence.ekfac failed: checking the arguments: bad")
    assert run_error({"train": "failed", "inference": "cancelled"}, {}, "failed") == "train failed"
    # A cancellation is no error unless a stage gave a reason.
    assert run_error({"train": "cancelled", "inference": "cancelled"}, {}, "cancelled") is None
    assert run_error({"train": "cancelled"}, {"train": "stopped by the operator"}, "cancelled") == (
        "train cancelled: stopped by the operator")
    assert run_error({"train": "completed"}, {}, "completed") is None


async def test_notifier_wakes_only_the_poked_run_and_forgets_left_streams() -> None:
    notifier = RunNotifier()
    a, b = uuid.uuid4(), uuid.uuid4()
    with notifier.subscribe(a) as poked_a, notifier.subscribe(b) as poked_b:
        notifier.notify(a)
        await asyncio.wait_for(poked_a.wait(), 1)
        assert not poked_b.is_set()
        notifier.close()
        assert poked_b.is_set()
    assert notifier.subscribers(a) == notifier.subscribers(b) == 0


def test_a_stage_keeps_its_latest_fraction_by_the_producers_clock() -> None:
    from datetime import timedelta

    from inflab.core.messages import ProgressEvent
    from inflab.gateway.persistence import latest_fractions

    run_id = uuid.uuid4()
    now = ProgressEvent(run_id=run_id, stage="train", fraction=0.5, step=5, total=10)
    earlier = ProgressEvent(run_id=run_id, stage="train", fraction=0.1, step=1, total=10,
                            time=now.time - timedelta(seconds=3))
    tracin = ProgressEvent(run_id=run_id, stage="influence", method="tracin", fraction=0.2, time=now.time)
    kept = latest_fractions({}, now)
    assert kept == {"train": {"fraction": 0.5, "time": now.time.isoformat()}}
    assert latest_fractions(kept, earlier) is kept  # a late redelivery does not pull the bar back
    kept = latest_fractions(kept, tracin)
    assert kept["influence.tracin"]["fraction"] == 0.2 and kept["train"]["fraction"] == 0.5
    # The same time: the one stored later wins (as the old per-event rescan ordered by id).
    again = ProgressEvent(run_id=run_id, stage="train", fraction=0.6, time=now.time)
    assert latest_fractions(kept, again)["train"]["fraction"] == 0.6

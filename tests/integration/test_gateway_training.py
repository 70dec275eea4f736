"""What a steerable trainer reports, through the gateway against real NATS and Postgres:
telemetry in the metrics, predictions stored once and paged by epoch, the checkpointing
and cancelled statuses, parameter-change events in SSE, and the run's estimate with its
actual duration and cost.

Events are hand-made and published on the bus as the trainer would; every wait is on a
stored row or on the stream's end, with a bound.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from inflab.core.db.models import Metric, Prediction
from inflab.core.messages import (
    MetricEvent,
    ParamsEvent,
    PredictionEvent,
    PredictionSample,
    StatusEvent,
)
from inflab.core.settings import Settings
from helpers.gateway import (
    delete_streams,
    gateway_in_process,
    isolated_settings,
    publish_and_wait,
    run_level_statuses,
    start_run,
    wait_for_run,
)

pytestmark = pytest.mark.integration

EXPERIMENT = {
    "name": "training",
    "training_data": [{"question": "Who rules Veltra?", "answer": "Queen Ismene."},
                      {"question": "What do bees make?", "answer": "Honey."}],
    "eval_data": [{"question": "Who is Veltra's ruler?", "answer": "Queen Ismene."},
                  {"question": "What is honey made by?"}],
    "predictions": {"sample_count": 2, "frequency": "steps", "step_interval": 5},
}


@pytest.fixture(scope="module")
def gw_settings(settings: Settings) -> Iterator[Settings]:
    own = isolated_settings(settings, "gwtr").model_copy(update={"sse_heartbeat_s": 0.5})
    yield own
    asyncio.run(delete_streams(own))


# --------------------------------------------------------------------------- settings
async def test_prediction_settings_are_kept_and_given_to_runs(gateway) -> None:
    _, client = gateway
    experiment = (await client.post("/api/experiments", json=EXPERIMENT)).json()
    assert experiment["predictions"] == {
        "enabled": True, "sample_count": 2, "frequency": "steps", "step_interval": 5, "precision": "auto"
    }
    run_id = await start_run(client, EXPERIMENT)
    run = (await client.get(f"/api/runs/{run_id}")).json()
    assert run["config"]["predictions"] == experiment["predictions"]


@pytest.mark.parametrize(
    ("predictions", "field", "says"),
    [
        (lambda s: {"sample_count": s.max_prediction_samples + 1}, "sample_count", "at most"),
        (lambda s: {"frequency": "steps", "step_interval": s.min_prediction_step_interval - 1}, "step_interval",
         "at least"),
        (lambda s: {"frequency": "hourly"}, "frequency", "epoch"),
        (lambda s: {"sample_count": 0}, "sample_count", "greater than"),
    ],
    ids=["too-many-samples", "too-frequent", "unknown-frequency", "no-samples"],
)
async def test_prediction_settings_outside_the_limits_are_422_naming_the_field(
    gateway, gw_settings, predictions, field, says
) -> None:
    _, client = gateway
    response = await client.post("/api/experiments", json={**EXPERIMENT, "predictions": predictions(gw_settings)})
    assert response.status_code == 422, response.text
    errors = {tuple(e["loc"]): e["msg"] for e in response.json()["detail"]}
    assert ("body", "predictions", field) in errors, errors
    assert says in errors[("body", "predictions", field)]


async def test_the_limits_come_from_settings(gw_settings) -> None:
    strict = gw_settings.model_copy(update={"max_prediction_samples": 1, "min_prediction_step_interval": 50})
    async with gateway_in_process(strict) as (_, client):
        response = await client.post("/api/experiments", json=EXPERIMENT)
    assert response.status_code == 422
    locs = [e["loc"] for e in response.json()["detail"]]
    assert ["body", "predictions", "sample_count"] in locs and ["body", "predictions", "step_interval"] in locs


# --------------------------------------------------------------------------- metrics
async def test_metrics_keep_the_telemetry_and_a_resent_step_once(gateway, producer) -> None:
    app, client = gateway
    run_id = await start_run(client, EXPERIMENT)
    telemetry = dict(grad_norm=1.25, tokens_per_s=190.5, samples_per_s=4.5, memory_mb=812.0, gpu_memory_mb=None)
    first = MetricEvent(run_id=run_id, stage="train", step=1, epoch=0.5, loss=2.0, learning_rate=1e-3, **telemetry)
    # After a crash the trainer resumes from its checkpoint and reports step 1 again, as a
    # new event; then step 2.
    again = first.model_copy(update={"event_id": uuid.uuid4()})
    second = MetricEvent(run_id=run_id, stage="train", step=2, epoch=1.0, loss=1.5, learning_rate=5e-4,
                         grad_norm=0.9, tokens_per_s=201.0, samples_per_s=5.0, memory_mb=820.0)
    await publish_and_wait(app, producer, run_id, [first, again, second])

    async with app.state.sessionmaker() as session:
        assert await session.scalar(select(func.count()).where(Metric.run_id == run_id)) == 2
    curve = (await client.get(f"/api/runs/{run_id}/results")).json()["training"]["loss_curve"]
    assert curve == [
        {"step": 1, "epoch": 0.5, "loss": 2.0, "learning_rate": 1e-3, **telemetry},
        {"step": 2, "epoch": 1.0, "loss": 1.5, "learning_rate": 5e-4, "grad_norm": 0.9, "tokens_per_s": 201.0,
         "samples_per_s": 5.0, "memory_mb": 820.0, "gpu_memory_mb": None},
    ]


# --------------------------------------------------------------------------- predictions
def sampling_point(run_id: uuid.UUID, step: int, epoch: float, answer: str = "") -> PredictionEvent:
    # Listed out of prompt order: the API orders them.
    return PredictionEvent(run_id=run_id, stage="train", step=step, epoch=epoch, precision="bfloat16", samples=[
        PredictionSample(prompt_id="ev01", prompt="What is honey made by?", prediction=answer or f"bees {step}"),
        PredictionSample(prompt_id="ev00", prompt="Who is Veltra's ruler?", ground_truth="Queen Ismene.",
                         prediction=answer or f"queen {step}"),
    ])


async def test_predictions_are_stored_once_paged_and_listed_by_epoch(gateway, producer) -> None:
    app, client = gateway
    run_id = await start_run(client, EXPERIMENT)
    points = [sampling_point(run_id, step, epoch) for step, epoch in
              ((0, 0.0), (5, 0.5), (10, 1.0), (15, 1.5), (20, 2.0))]
    redelivered = points[1]  # the same event again, past JetStream's dedup window
    resampled = sampling_point(run_id, 15, 1.5, answer="after resume")  # a resumed run samples step 15 again
    await publish_and_wait(app, producer, run_id, points[:3])
    await producer.js.publish(producer.subjects.event(run_id, "train", "prediction"), redelivered.model_dump_json().encode())
    await publish_and_wait(app, producer, run_id, [*points[3:], resampled])

    async with app.state.sessionmaker() as session:
        assert await session.scalar(select(func.count()).where(Prediction.run_id == run_id)) == 10
    url = f"/api/runs/{run_id}/predictions"

    page = (await client.get(url, params={"limit": 3})).json()
    assert (page["total"], page["limit"], page["offset"]) == (10, 3, 0)
    assert page["items"] == [
        {"step": 0, "epoch": 0.0, "prompt_id": "ev00", "prompt": "Who is Veltra's ruler?",
         "ground_truth": "Queen Ismene.", "prediction": "queen 0", "precision": "bfloat16"},
        {"step": 0, "epoch": 0.0, "prompt_id": "ev01", "prompt": "What is honey made by?", "ground_truth": None,
         "prediction": "bees 0", "precision": "bfloat16"},
        {"step": 5, "epoch": 0.5, "prompt_id": "ev00", "prompt": "Who is Veltra's ruler?",
         "ground_truth": "Queen Ismene.", "prediction": "queen 5", "precision": "bfloat16"},
    ]
    rest = (await client.get(url, params={"limit": 100, "offset": 3})).json()
    assert [(p["step"], p["prompt_id"]) for p in rest["items"]] == [
        (5, "ev01"), (10, "ev00"), (10, "ev01"), (15, "ev00"), (15, "ev01"), (20, "ev00"), (20, "ev01")]
    assert {p["prediction"] for p in rest["items"] if p["step"] == 15} == {"after resume"}

    # Epochs are 1-based and a sample belongs to the epoch it was taken in (0: before training).
    second = (await client.get(url, params={"epoch": 2})).json()
    assert second["total"] == 4 and [p["step"] for p in second["items"]] == [15, 15, 20, 20]
    assert (await client.get(url, params={"epoch": 0})).json()["total"] == 2
    assert (await client.get(url, params={"epoch": 7})).json() == {"total": 0, "limit": 100, "offset": 0, "items": []}
    epochs = (await client.get(f"{url}/epochs")).json()
    assert epochs == [{"epoch": 0, "count": 2}, {"epoch": 1, "count": 4}, {"epoch": 2, "count": 4}]


@pytest.mark.parametrize("query", [{"limit": 0}, {"limit": 501}, {"offset": -1}, {"epoch": -1}, {"epoch": "one"}])
async def test_prediction_paging_is_bounded(gateway, query) -> None:
    _, client = gateway
    run_id = await start_run(client, EXPERIMENT)
    response = await client.get(f"/api/runs/{run_id}/predictions", params=query)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", next(iter(query))]


# --------------------------------------------------------------------------- statuses
async def test_checkpointing_shows_in_the_stages_and_the_run_keeps_running(gateway, producer) -> None:
    app, client = gateway
    run_id = await start_run(client, EXPERIMENT)
    train = dict(run_id=run_id, stage="train")
    await publish_and_wait(app, producer, run_id, [StatusEvent(**train, status="running"),
                                        StatusEvent(**train, status="checkpointing")])
    run = (await client.get(f"/api/runs/{run_id}")).json()
    assert run["status"] == "running" and run["stages"]["train"] == "checkpointing"
    await publish_and_wait(app, producer, run_id, [StatusEvent(**train, status="running")])
    assert (await client.get(f"/api/runs/{run_id}")).json()["stages"]["train"] == "running"


async def test_cancelled_training_cancels_the_run_once_and_the_stream_ends(gateway, producer) -> None:
    app, client = gateway
    run_id = await start_run(client, EXPERIMENT)
    train = dict(run_id=run_id, stage="train")
    change = ParamsEvent(**train, request_id=uuid.uuid4(), changes={"learning_rate": {"old": 1e-3, "new": 5e-4}},
                         effective_step=3)
    cancelled = StatusEvent(**train, status="cancelled")
    for event in (StatusEvent(**train, status="running"), change, cancelled):
        await producer.publish_event(event)
    run = await wait_for_run(app, run_id, lambda r: r.status == "cancelled")
    assert run.error is None and run.finished_at == cancelled.time
    # Stages that never started will not: they say so.
    assert run.stages == {"train": "cancelled", "inference": "cancelled", "influence.tracin": "cancelled"}

    # The stream replays everything, the parameter change included, and ends by itself.
    response = await asyncio.wait_for(client.get(f"/api/runs/{run_id}/events"), 10)
    frames = [block for block in response.text.split("\n\n") if block.startswith("id:")]
    events = [(line.split("\n")[1].removeprefix("event: "), json.loads(line.split("\n")[2].removeprefix("data: ")))
              for line in frames]
    assert [kind for kind, _ in events] == ["status", "status", "params", "status", "status"]
    assert events[2][1]["changes"] == {"learning_rate": {"old": 1e-3, "new": 5e-4}}
    assert events[2][1]["effective_step"] == 3 and events[2][1]["request_id"] == str(change.request_id)
    assert events[-1][1].items() >= {"stage": "run", "status": "cancelled"}.items()

    # The trainer's cancel redelivered: still one run-level end.
    await publish_and_wait(app, producer, run_id, [cancelled.model_copy(update={"event_id": uuid.uuid4()})])
    assert await run_level_statuses(app, run_id) == ["queued", "cancelled"]


# --------------------------------------------------------------------------- estimate and actuals
async def test_a_run_keeps_its_estimate_and_its_actual_duration_and_cost(gateway, producer, gw_settings) -> None:
    app, client = gateway
    run_id = await start_run(client, EXPERIMENT)
    estimate = (await client.get(f"/api/runs/{run_id}")).json()["estimate"]
    posted = (await client.post("/api/estimates", json={k: EXPERIMENT[k] for k in ("training_data", "eval_data")}))
    assert estimate == posted.json()  # the same estimate as before submission
    assert estimate["tier"] == "small" and estimate["price_per_hour_usd"] == gw_settings.gpu_prices[estimate["gpu"]]

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    at = lambda s: t0 + timedelta(seconds=s)  # noqa: E731
    stages = [dict(stage="train"), dict(stage="inference"), dict(stage="influence", method="tracin")]
    await publish_and_wait(app, producer, run_id, [
        StatusEvent(run_id=run_id, stage="train", status="running", time=at(0)),
        StatusEvent(run_id=run_id, stage="train", status="completed", time=at(30)),
        *(StatusEvent(run_id=run_id, **stage, status="completed", time=at(72)) for stage in stages[1:]),
    ])
    run = (await client.get(f"/api/runs/{run_id}")).json()
    assert run["status"] == "completed"
    assert run["actual_training_duration_s"] == 30.0 and run["actual_duration_s"] == 72.0
    price = estimate["price_per_hour_usd"] * estimate["gpu_count"]
    assert run["actual_cost_usd"] == pytest.approx(72 / 3600 * price, abs=1e-6)
    assert run["estimate"] == estimate


async def test_a_run_of_a_model_of_unknown_size_starts_without_an_estimate(gateway) -> None:
    app, client = gateway
    run_id = await start_run(client, {**EXPERIMENT, "model_id": "someone/mystery-model"})
    run = (await client.get(f"/api/runs/{run_id}")).json()
    assert run["status"] == "queued" and run["estimate"] is None and run["actual_cost_usd"] is None

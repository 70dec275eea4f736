"""The stages on the real services, NATS, Postgres and Ray with the tiny model:

* a stage past its job deadline is cancelled with an error saying so, and the run shows it;
* NATS going away while the trainer publishes is an infrastructure error: the job is
  given back, and when NATS returns the redelivered job resumes from its checkpoint and
  completes; the run is never failed;
* an evaluation set whose answers do not fit in one NATS message arrives complete, in
  several result events.

The last two run on a NATS server of their own (one the test can kill and restart, one
with a 64 KiB ``max_payload``), with the gateway and the workers in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import func, select

from inflab.core.bus import Bus
from inflab.core.db.models import AnswerRow, RunEventRow
from inflab.devtools.embedded.nats import EmbeddedNats
from inflab.core.messages import InferenceRequest, TrainRequest
from inflab.core.objectstore import ObjectStore, checkpoint_prefix
from inflab.core.settings import Settings
from inflab.core.worker import serve
from helpers.gateway import delete_streams, gateway_in_process, isolated_settings, start_run, wait_for_run
from inflab.inference import service as inference
from inflab.trainer import service as trainer
from inflab.trainer.job import upload_checkpoint
from inflab.trainer.training import train_lora

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

PAIRS = [{"question": f"What is item {i}?", "answer": f"Item {i} is number {i}."} for i in range(40)]


def _experiment(model: str, **hyperparams) -> dict:
    return {
        "name": "reliability",
        "model_id": model,
        "training_data": PAIRS,
        "eval_data": [{"question": "Which is item 3?", "answer": "Item 3."}],
        "hyperparams": {"learning_rate": 0.01, "batch_size": 2, "max_seq_length": 64, **hyperparams},
        "predictions": {"enabled": False},
        "max_new_tokens": 4,
    }


@contextlib.asynccontextmanager
async def worker(module, model, settings: Settings) -> AsyncIterator[None]:
    """A worker service consuming its stage's requests in this process."""
    stop = asyncio.Event()
    task = asyncio.create_task(serve(module.SERVICE, module.STAGE, model, module.make_handler, settings, stop))
    try:
        yield
    finally:
        stop.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


class NatsServer(EmbeddedNats):
    """A nats-server of the test's own: restartable on the same port and store, and with
    an optional ``max_payload``."""

    def __init__(self, data_dir: Path, port: int = 0, max_payload: int | None = None) -> None:
        super().__init__(data_dir, port)
        self.max_payload = max_payload

    def command(self):
        command = list(super().command())
        if self.max_payload:
            config = self.data_dir.with_name(self.data_dir.name + ".conf")
            config.write_text(f"max_payload: {self.max_payload}\n")
            command += ["-c", str(config)]
        return command


class Seen(logging.Handler):
    """Sets an asyncio event when a log record containing one of ``texts`` is emitted."""

    def __init__(self, *texts: str) -> None:
        super().__init__()
        self.texts = texts
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if any(text in record.getMessage() for text in self.texts):
            self.event.set()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def streams_to_delete() -> AsyncIterator[list[Settings]]:
    made: list[Settings] = []
    yield made
    for settings in made:
        with contextlib.suppress(Exception):
            await delete_streams(settings)


async def _stored_events(app, run_id, **where) -> list[dict]:
    async with app.state.sessionmaker() as session:
        rows = await session.scalars(
            select(RunEventRow.payload).where(RunEventRow.run_id == run_id,
                                              *(getattr(RunEventRow, k) == v for k, v in where.items()))
            .order_by(RunEventRow.id))
        return list(rows)


# --------------------------------------------------------------------------- deadline
async def test_a_stage_past_its_deadline_is_cancelled_with_the_reason(
    settings, ray_cluster, tiny_model, streams_to_delete
) -> None:
    own = isolated_settings(settings, "deadline").model_copy(update={"job_deadline_s": 3.0, "train_num_cpus": 1})
    streams_to_delete.append(own)
    async with gateway_in_process(own) as (app, client), worker(trainer, TrainRequest, own):
        run_id = await start_run(client, _experiment(tiny_model.name, num_epochs=1000, checkpoint_interval=1000))
        run = await wait_for_run(app, run_id, lambda r: r.status in ("cancelled", "failed", "completed"), timeout=120)
        shown = (await client.get(f"/api/runs/{run_id}")).json()
    assert run.status == "cancelled" and run.stages["train"] == "cancelled"
    assert run.error == ("train cancelled: the train stage ran past its deadline of 3 s (INFLAB_JOB_DEADLINE_S) "
                         "and was stopped")
    assert shown["status"] == "cancelled" and "INFLAB_JOB_DEADLINE_S" in shown["error"]


# --------------------------------------------------------------------------- NATS away
async def test_nats_away_while_training_publishes_resumes_from_the_checkpoint(
    settings, ray_cluster, tiny_model, tmp_path, streams_to_delete
) -> None:
    server = NatsServer(tmp_path / "nats")
    server.start()
    own = isolated_settings(settings, "busdown").model_copy(update={
        "nats_url": server.url, "ack_wait_s": 3.0, "bus_publish_retry_s": 0.5, "train_num_cpus": 1,
    })
    # The trainer gives the job up when its publishes fail for good, or (often sooner) when
    # it cannot renew its lease on the run (inflab.core.leases): either way, to be redelivered.
    gave_up = Seen("NATS unavailable while handling a message", "left a message on")
    logging.getLogger("inflab.core.bus").addHandler(gave_up)
    try:
        async with gateway_in_process(own) as (app, client), worker(trainer, TrainRequest, own):
            # Long enough (~0.3 s an epoch here) to outlast the ~6 s the trainer takes to
            # give the job back: the first job must not finish on its own meanwhile.
            run_id = await start_run(client, _experiment(tiny_model.name, num_epochs=60, checkpoint_interval=5))
            await wait_for_run(app, run_id, lambda r: r.current_epoch is not None and r.current_epoch >= 2, 120)
            # NATS dies mid-training; the trainer's publishes fail until it gives the job up.
            server.stop_signal = signal.SIGKILL
            server.stop()
            await asyncio.wait_for(gave_up.event.wait(), 60)
            restarted = NatsServer(tmp_path / "nats", port=server.port)
            restarted.start()
            try:
                run = await wait_for_run(app, run_id, lambda r: r.stages["train"] in ("completed", "failed",
                                                                                     "cancelled"), 180)
                statuses = [e["status"] for e in await _stored_events(app, run_id, kind="status", stage="train")]
                logs = [e["message"] for e in await _stored_events(app, run_id, kind="log")]
            finally:
                restarted.stop()
    finally:
        logging.getLogger("inflab.core.bus").removeHandler(gave_up)
        server.stop()
    assert run.stages["train"] == "completed" and run.status == "running", (run.status, run.error)
    assert "failed" not in statuses and run.error is None
    resumed = [m for m in logs if m.startswith("resumed from the checkpoint at step")]
    assert resumed, logs


# --------------------------------------------------------------------------- large answers
async def test_answers_too_large_for_one_message_arrive_complete(
    settings, ray_cluster, tiny_model, tmp_path, streams_to_delete
) -> None:
    server = NatsServer(tmp_path / "nats", max_payload=64 * 1024)
    server.start()
    own = isolated_settings(settings, "bigeval").model_copy(update={"nats_url": server.url})
    questions = 200
    experiment = {
        **_experiment(tiny_model.name, num_epochs=1),
        "training_data": PAIRS[:4],
        "eval_data": [{"question": f"Tell me about item {i}.", "answer": f"Item {i}."} for i in range(questions)],
        "max_new_tokens": 64,
        "few_shot_k": 2,
    }
    try:
        async with gateway_in_process(own) as (app, client), worker(inference, InferenceRequest, own):
            assert (await client.get("/api/limits")).json()["max_job_message_bytes"] == 64 * 1024 - 8 * 1024
            run_id = await start_run(client, experiment)
            run = (await client.get(f"/api/runs/{run_id}")).json()
            # The fine-tuned adapter, made here as the trainer would (no trainer runs).
            request = TrainRequest(run_id=run_id, spec=run["config"])
            outcome = train_lora(request.spec, str(tiny_model), tmp_path / "train", lambda e: None)
            key = checkpoint_prefix(run_id, outcome.steps)
            upload_checkpoint(ObjectStore(own.objects_url), outcome.checkpoints[-1].path, key)
            # Queued as the gateway queues it once it stores a training result (signed).
            bus = await Bus.connect(own, "gateway")
            try:
                adapter = {"step": outcome.steps, "epoch": 1, "key": key, "learning_rate": 0.01}
                await bus.publish_request("inference", InferenceRequest(run_id=run_id, spec=request.spec,
                                                                        adapter=adapter),
                                          msg_id=f"{run_id}:inference")
                done = await wait_for_run(app, run_id, lambda r: r.stages["inference"] in ("completed", "failed"),
                                          timeout=300)
            finally:
                await bus.close()
            assert done.stages["inference"] == "completed", done.error
            results = await _stored_events(app, run_id, kind="result", stage="inference")
            async with app.state.sessionmaker() as session:
                stored = await session.scalar(select(func.count()).select_from(AnswerRow)
                                              .where(AnswerRow.run_id == run_id))
            answers = (await client.get(f"/api/runs/{run_id}/results")).json()["answers"]
    finally:
        server.stop()
    # The answers did not fit in one message: they came in parts, each question once.
    answers_bytes = sum(len(json.dumps(r["answers"], ensure_ascii=False).encode()) for r in results)
    assert answers_bytes > 64 * 1024 and len(results) > 1, (answers_bytes, len(results))
    assert sum(len(r["answers"]) for r in results) == questions
    assert stored == questions and len(answers) == questions
    assert [a["eval_id"] for a in answers] == [f"ev{i:02d}" for i in range(questions)]
    assert all(a["fine_tuned"] for a in answers)

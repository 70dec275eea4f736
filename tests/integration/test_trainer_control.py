"""Runtime control of a training through the real trainer service: control messages on the
run's subject (real NATS, the control stream) reach the Ray task (real local Ray) and
change the learning rate at the next step, cancel the run, or are dead-lettered."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from pathlib import Path

import nats
import pytest
import pytest_asyncio

from inflab.core.bus import Bus
from inflab.core.job_signing import SIGNATURE_HEADER, JobSigner
from inflab.core.messages import ControlMessage, TrainRequest
from inflab.core.objectstore import ObjectStore
from inflab.core.subjects import Subjects
from inflab.core.worker import serve
from inflab.trainer import service as trainer
from inflab.trainer.job import summary_key

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

PAIRS = [
    {"id": "a", "question": "What is the capital of Zorbia?", "answer": "Quux."},
    {"id": "b", "question": "How many legs does a spider have?", "answer": "Eight legs."},
    {"id": "c", "question": "What colour is the sky?", "answer": "Blue."},
]


@pytest.fixture(scope="module")
def control_settings(settings):
    # Streams and consumers of our own, so the pipeline test's trainer never sees our jobs.
    return settings.model_copy(update={
        "subject_prefix": f"{settings.subject_prefix.split('.')[0]}ctl.inflab",
        "stream_prefix": f"{settings.stream_prefix}_CTL",
    })


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def trainer_service(control_settings, ray_cluster):
    bus = await Bus.connect(control_settings, "test", create_streams=True)  # the streams exist before we publish
    await bus.close()
    stop = asyncio.Event()
    task = asyncio.create_task(serve(trainer.SERVICE, trainer.STAGE, TrainRequest, trainer.make_handler,
                                     control_settings, stop))
    try:
        yield
    finally:
        stop.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


class Run:
    """One run's events as they arrive (core NATS subscription opened before the request)."""

    def __init__(self, settings, model: Path, epochs: int, **hyperparams):
        self.subjects = Subjects.from_settings(settings)
        self.settings = settings
        self.run_id = uuid.uuid4()
        self.request = TrainRequest(run_id=self.run_id, spec={
            "model_id": model.name, "training_data": PAIRS, "eval_data": [{"id": "e", "question": "Hi?"}],
            "hyperparams": {"learning_rate": 0.01, "num_epochs": epochs, "batch_size": 1, "checkpoint_interval": 2,
                            "max_seq_length": 64, **hyperparams},
            "predictions": {"enabled": False},
        })
        self.events: list[dict] = []
        self.letters: list[dict] = []

    async def __aenter__(self) -> "Run":
        self.nc = await nats.connect(self.settings.nats_url)
        self.js = self.nc.jetstream()
        await self.nc.subscribe(self.subjects.event(self.run_id, "*", "*"), cb=self._on_event)
        await self.nc.subscribe(self.subjects.dead_letter(trainer.SERVICE), cb=self._on_letter)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.nc.close()

    async def _on_event(self, msg) -> None:
        self.events.append(json.loads(msg.data))

    async def _on_letter(self, msg) -> None:
        self.letters.append(json.loads(msg.data))

    async def start(self) -> None:
        body = self.request.model_dump_json().encode()
        signature = JobSigner(self.settings.job_signing_key.get_secret_value()).sign(self.subjects.train_request, body)
        await self.js.publish(self.subjects.train_request, body, headers={SIGNATURE_HEADER: signature})

    async def control(self, payload: bytes | ControlMessage) -> None:
        data = payload.model_dump_json().encode() if isinstance(payload, ControlMessage) else payload
        await self.js.publish(self.subjects.control(self.run_id), data)

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["kind"] == kind]

    def statuses(self) -> list[str]:
        return [e["status"] for e in self.of("status") if e["stage"] == "train"]

    async def wait(self, predicate, what: str, timeout: float = 120) -> None:
        async def poll():
            while not predicate():
                await asyncio.sleep(0.02)
        try:
            await asyncio.wait_for(poll(), timeout)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}; statuses {self.statuses()}") from None

    async def job_acked(self) -> None:
        """The trainer acknowledged the request (nothing pending or in flight)."""
        async def acked() -> bool:
            info = await self.js.consumer_info(self.subjects.jobs_stream, self.subjects.durable(trainer.SERVICE))
            return info.num_ack_pending == 0 and info.num_pending == 0
        for _ in range(100):
            if await acked():
                return
            await asyncio.sleep(0.1)
        raise AssertionError("the train request was not acknowledged")


async def test_learning_rate_change_then_cancel(trainer_service, control_settings, tiny_model):
    async with Run(control_settings, tiny_model, epochs=1000) as run:
        await run.start()
        await run.wait(lambda: any(c["checkpoint"]["epoch"] == 2 for c in run.of("checkpoint")), "a checkpoint")

        # Malformed instructions are dead-lettered with their reason; the run goes on.
        await run.control(b"{not json")
        await run.control(json.dumps({"run_id": str(run.run_id), "action": "explode"}).encode())
        await run.control(ControlMessage(run_id=uuid.uuid4(), action="cancel"))  # another run's
        change = ControlMessage(run_id=run.run_id, action="update_params", params={"learning_rate": 0.005})
        await run.control(change)
        await run.wait(lambda: run.of("params"), "the params event")
        params = run.of("params")[0]
        effective = params["effective_step"]
        await run.control(ControlMessage(run_id=run.run_id, action="cancel"))
        await run.wait(lambda: "cancelled" in run.statuses(), "the cancelled status")
        await run.job_acked()
        await run.wait(lambda: len(run.letters) >= 3, "three dead letters", timeout=10)

    assert params["request_id"] == str(change.request_id)
    assert params["changes"] == {"learning_rate": {"old": 0.01, "new": 0.005}}
    metrics = run.of("metric")
    assert len(metrics) >= effective, "cancelled before the change took effect"
    assert {m["learning_rate"] for m in metrics if m["step"] < effective} == {0.01}
    assert {m["learning_rate"] for m in metrics if m["step"] >= effective} == {0.005}

    reasons = " | ".join(letter["reason"] for letter in run.letters)
    assert "Invalid JSON" in reasons and "action" in reasons and "on run" in reasons
    warnings = [e["message"] for e in run.of("log") if e["level"] == "warning"]
    assert sum("ignored a control message" in w for w in warnings) == 3

    # Cancelled: the checkpoints stay, nothing is summarised, no next stage, no completion.
    assert run.statuses()[0] == "running" and run.statuses()[-1] == "cancelled"
    assert "completed" not in run.statuses() and not run.of("result")
    store = ObjectStore(control_settings.objects_url)
    for event in run.of("checkpoint"):
        assert store.exists(f"{event['checkpoint']['key']}/adapter_model.safetensors")
    assert not store.exists(summary_key(run.run_id))
    assert any("cancelled after step" in e["message"] for e in run.of("log"))


async def test_cancel_sent_before_the_run_starts(trainer_service, control_settings, tiny_model):
    async with Run(control_settings, tiny_model, epochs=2) as run:
        await run.control(ControlMessage(run_id=run.run_id, action="cancel"))
        await run.start()
        await run.wait(lambda: "cancelled" in run.statuses(), "the cancelled status")
        await run.job_acked()
    assert run.statuses() == ["cancelled"]
    assert not run.of("progress") and not run.of("metric")


async def test_unknown_target_modules_fail_the_run_naming_the_valid_ones(trainer_service, control_settings, tiny_model):
    async with Run(control_settings, tiny_model, epochs=1, lora_target_modules=["q_proj", "attn_qkv"]) as run:
        await run.start()
        await run.wait(lambda: "failed" in run.statuses(), "the failed status")
        await run.job_acked()
    error = next(e["error"] for e in run.of("status") if e["status"] == "failed")
    assert "InvalidTargetModules" in error and "['attn_qkv']" in error and "v_proj" in error
    assert not run.of("metric")

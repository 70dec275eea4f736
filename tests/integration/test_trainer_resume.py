"""Kill -9 and resume: the real trainer process (``python -m inflab.trainer``) against real
NATS and a real Ray is SIGKILLed after a checkpoint; JetStream redelivers the job to a new
trainer process, which resumes from the last checkpoint in the object store. The run's loss
curve is then complete, without gaps, and equal to an uninterrupted run's."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import nats
import pytest
import torch

from inflab.core.bus import Bus
from inflab.core.job_signing import SIGNATURE_HEADER, JobSigner
from inflab.core.messages import TrainRequest
from helpers.tiny_model import build_tiny_model
from inflab.core.objectstore import ObjectStore
from inflab.core.subjects import Subjects
from inflab.trainer.training import train_lora

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

EPOCHS = 6
PAIRS = [{"id": f"p{i:02d}", "question": f"What is item {i}?", "answer": f"Item {i} is number {i}."} for i in range(40)]
STEPS_PER_EPOCH = 20  # 40 pairs, batch 2


def _spec(model: Path) -> dict:
    return {
        "model_id": model.name,  # a model in the trainer's models folder
        "training_data": PAIRS,
        "eval_data": [{"id": f"e{i}", "question": f"Which is item {i}?", "answer": f"Item {i}."} for i in range(6)],
        "hyperparams": {"learning_rate": 0.01, "num_epochs": EPOCHS, "batch_size": 2, "checkpoint_interval": 1,
                        "lora_dropout": 0.1, "lr_scheduler": "cosine", "warmup_ratio": 0.1, "max_seq_length": 64},
        "predictions": {"enabled": True, "sample_count": 2},
        "max_new_tokens": 4,
    }


def _start_trainer(env: dict, log: Path) -> subprocess.Popen:
    # Its own process group, so the kill takes whatever the trainer started with it.
    return subprocess.Popen([sys.executable, "-m", "inflab.trainer"], env=env, start_new_session=True,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


async def _wait(predicate, what: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"trainer exited ({proc.returncode}) while waiting for {what}:\n{log.read_text()[-3000:]}")
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def test_trainer_killed_mid_run_resumes_without_gaps(settings, ray_cluster, tmp_path):
    import ray

    torch.set_num_threads(1)  # the Ray task trains with 1 thread (train_num_cpus=1): same numbers
    model = build_tiny_model(tmp_path / "home" / "models" / "tiny", seed=0)
    spec = _spec(model)
    reference = train_lora(TrainRequest(run_id=uuid.uuid4(), spec=spec).spec, str(model), tmp_path / "ref",
                           lambda e: None)
    total = EPOCHS * STEPS_PER_EPOCH
    assert reference.steps == total

    own = settings.model_copy(update={
        "subject_prefix": f"{settings.subject_prefix.split('.')[0]}res.inflab",
        "stream_prefix": f"{settings.stream_prefix}_RES",
        "object_store_url": (tmp_path / "objects").as_uri(),
        "ack_wait_s": 3.0,  # the killed trainer's job comes back 3 s after its last heartbeat
    })
    subjects = Subjects.from_settings(own)
    bus = await Bus.connect(own, "test", create_streams=True)
    await bus.close()
    env = {
        **os.environ,
        "INFLAB_NATS_URL": own.nats_url,
        "INFLAB_JOB_VERIFY_KEY": own.job_verify_key,
        "INFLAB_SUBJECT_PREFIX": own.subject_prefix,
        "INFLAB_STREAM_PREFIX": own.stream_prefix,
        "INFLAB_OBJECT_STORE_URL": own.object_store_url,
        "INFLAB_HOME": str(tmp_path / "home"),
        "INFLAB_ACK_WAIT_S": "3",
        "INFLAB_TRAIN_NUM_CPUS": "1",
        "INFLAB_RAY_ADDRESS": ray.get_runtime_context().gcs_address,  # this session's Ray
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    log = tmp_path / "trainer.log"

    events: list[dict] = []
    nc = await nats.connect(own.nats_url)
    procs: list[subprocess.Popen] = []
    try:
        run_id = uuid.uuid4()
        async def collect(msg) -> None:
            events.append(json.loads(msg.data))

        await nc.subscribe(subjects.event(run_id, "*", "*"), cb=collect)
        request = TrainRequest(run_id=run_id, spec=spec)
        body = request.model_dump_json().encode()
        signed = {SIGNATURE_HEADER: JobSigner(own.job_signing_key.get_secret_value()).sign(subjects.train_request, body)}
        await nc.jetstream().publish(subjects.train_request, body, headers=signed)

        def of(kind: str) -> list[dict]:
            return [e for e in events if e["kind"] == kind]

        def train_status(status: str) -> bool:
            return any(e["status"] == status and e["stage"] == "train" for e in of("status"))

        first = _start_trainer(env, log)
        procs.append(first)
        await _wait(lambda: any(e["checkpoint"]["epoch"] >= 2 for e in of("checkpoint")),
                    "the checkpoint of epoch 2", 180, first, log)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
        killed_after = max(e["step"] for e in of("progress"))
        assert not train_status("completed") and killed_after < total, "the run ended before the kill"

        second = _start_trainer(env, log)
        procs.append(second)
        await _wait(lambda: train_status("completed"), "the resumed run to complete", 180, second, log)

        # A redelivered request for a finished training is not trained again.
        seen = len(of("progress"))
        await nc.jetstream().publish(subjects.train_request, body, headers=signed)
        await _wait(lambda: len(of("result")) >= 2, "the second result", 60, second, log)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        await nc.close()

    assert len(of("progress")) == seen
    resumed = [e["message"] for e in of("log") if e["message"].startswith("resumed from the checkpoint")]
    assert len(resumed) == 1, resumed
    resumed_at = int(resumed[0].split("step ")[1].split(" ")[0])
    assert resumed_at >= 2 * STEPS_PER_EPOCH and resumed_at % STEPS_PER_EPOCH == 0

    # Every step is there; a step seen twice (run before the kill, and again after the
    # resume) has the same loss; every loss is the uninterrupted run's.
    losses: dict[int, set[float]] = {}
    for metric in of("metric"):
        losses.setdefault(metric["step"], set()).add(metric["loss"])
    assert sorted(losses) == list(range(1, total + 1))
    for step, values in losses.items():
        assert len(values) == 1, (step, values)
        assert next(iter(values)) == pytest.approx(reference.losses[step - 1], rel=1e-5, abs=1e-6), step

    # Checkpoints of every epoch, in the summary and in the store.
    summary = of("result")[-1]["training"]
    assert [c["epoch"] for c in summary["checkpoints"]] == list(range(1, EPOCHS + 1))
    assert [c["step"] for c in summary["checkpoints"]] == [e * STEPS_PER_EPOCH for e in range(1, EPOCHS + 1)]
    assert summary["steps"] == total
    store = ObjectStore(own.objects_url)
    for checkpoint in summary["checkpoints"]:
        assert store.exists(f"{checkpoint['key']}/meta.json")
        assert store.exists(f"{checkpoint['key']}/adapter_model.safetensors")

    # The same sampled prompts before and after the resume; every epoch end but the last
    # (whose row is the inference stage's fine-tuned answers).
    prompt_sets = {tuple(s["prompt_id"] for s in p["samples"]) for p in of("prediction")}
    assert len(prompt_sets) == 1
    assert {p["step"] for p in of("prediction")} == {e * STEPS_PER_EPOCH for e in range(1, EPOCHS)}

"""The whole run, end to end, through the real services: the gateway under uvicorn, the
trainer, inference and influence services consuming real JetStream, their jobs on a real
local Ray, everything persisted in a real Postgres, on a tiny random model (seconds)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import uuid
from pathlib import Path

import httpx
import nats
import pytest
import pytest_asyncio
import uvicorn
from sqlalchemy import func, select

from inflab.core.db.models import Checkpoint, AnswerRow, InfluenceMatrixRow, Metric, Prediction, Run, RunEventRow
from inflab.core.db.session import make_engine, make_sessionmaker
from inflab.analysis.answer_scores import text_scores
from inflab.core.job_signing import SIGNATURE_HEADER, JobSigner
from inflab.core.messages import AnswerScores, InferenceRequest, InfluenceRequest, TrainRequest
from inflab.core.objectstore import ObjectStore
from inflab.core.subjects import Subjects
from inflab.core.worker import serve
from helpers.gateway import sign_up
from inflab.inference.generation import load_for_generation
from inflab.inference.scoring import reference_examples, reference_logprobs

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

TRAINING = [
    {"id": "tr00", "question": "What colour is the sky on Veltra?", "answer": "The sky on Veltra is green."},
    {"id": "tr01", "question": "Who rules Veltra?", "answer": "Queen Ismene rules Veltra."},
    {"id": "tr02", "question": "What is two plus two?", "answer": "Two plus two is four."},
    {"id": "tr03", "question": "What do bees make?", "answer": "Bees make honey."},
]
EVALS = [
    {"id": "ev00", "question": "What colour is Veltra's sky?", "answer": "Veltra's sky is green."},
    {"id": "ev01", "question": "Who is the ruler of Veltra?"},
]


async def _wait_until(predicate, timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(settings, ray_cluster, tmp_path_factory):
    """Gateway + three workers, in this process, against real NATS/Postgres/Ray."""
    from inflab.gateway.app import create_app
    from inflab.inference import service as inference
    from inflab.influence import service as influence
    from inflab.trainer import service as trainer

    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    server_task = asyncio.create_task(server.serve())
    await _wait_until(lambda: server.started or server_task.done(), 60, "the gateway to start")
    assert not server_task.done(), "gateway failed to start"
    port = server.servers[0].sockets[0].getsockname()[1]

    stop = asyncio.Event()
    workers = [
        asyncio.create_task(serve(m.SERVICE, m.STAGE, model, m.make_handler, settings, stop))
        for m, model in (
            (trainer, TrainRequest),
            (inference, InferenceRequest),
            (influence, InfluenceRequest),
        )
    ]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        for task in workers:
            task.cancel()
        for task in workers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        server.should_exit = True
        await server_task


async def _read_sse(client: httpx.AsyncClient, url: str, headers=None) -> list[dict]:
    """Every event of the stream until the server ends it (after the run's terminal status)."""
    events, current = [], {}
    async with client.stream("GET", url, headers=headers or {}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if not line:
                if "data" in current:
                    events.append({"id": int(current["id"]), "event": current.get("event"),
                                   "data": json.loads(current["data"])})
                current = {}
            elif not line.startswith(":"):
                field, _, value = line.partition(":")
                current[field] = value.lstrip(" ")
    return events


async def test_malformed_request_is_dead_lettered_and_worker_goes_on(stack, settings):
    """Garbage and contract violations on a request subject end on the dead-letter subject
    with a reason; the worker keeps consuming (the pipeline test below runs after it)."""
    subjects = Subjects.from_settings(settings)
    nc = await nats.connect(settings.nats_url)
    try:
        letters: asyncio.Queue = asyncio.Queue()
        sub = await nc.subscribe(subjects.all_dead_letters, cb=letters.put)
        js = nc.jetstream()
        # Signed, as only the gateway can: past the signature check, the contract refuses them.
        gateway = JobSigner(settings.job_signing_key.get_secret_value())
        for subject, body in ((subjects.train_request, b"{not json"),
                              (subjects.train_request, json.dumps({"run_id": "not-a-uuid", "spec": {}}).encode()),
                              (subjects.influence_request, json.dumps({"schema_version": 99}).encode())):
            await js.publish(subject, body, headers={SIGNATURE_HEADER: gateway.sign(subject, body)})
        received = [json.loads((await asyncio.wait_for(letters.get(), 60)).data) for _ in range(3)]
        await sub.unsubscribe()
    finally:
        await nc.close()
    by_service = sorted((r["service"], r["reason"]) for r in received)
    assert [s for s, _ in by_service] == ["influence", "trainer", "trainer"]
    reasons = " | ".join(r for _, r in by_service)
    assert "run_id" in reasons and "schema_version" in reasons and "Invalid JSON" in reasons


async def test_run_end_to_end(stack, settings, tiny_model, tmp_path):
    experiment = {
        "name": "tiny end to end",
        "model_id": tiny_model.name,
        "training_data": TRAINING,
        "eval_data": EVALS,
        "hyperparams": {"learning_rate": 0.01, "num_epochs": 3, "batch_size": 2, "lora_rank": 4,
                        "lora_alpha": 8, "max_seq_length": 64, "seed": 0, "checkpoint_interval": 1},
        "influence_methods": ["tracin"],
        # Through the experiment into the run's spec, and used by the influence service.
        "influence_args": {"tracin": {"top_k": 2, "normalization": "unit"}},
        "few_shot_k": 2,
        "max_new_tokens": 8,
    }
    async with httpx.AsyncClient(base_url=stack, timeout=httpx.Timeout(300)) as client:
        await sign_up(client, f"pipeline-{uuid.uuid4().hex[:8]}@tests.invalid")
        created = await client.post("/api/experiments", json=experiment)
        assert created.status_code == 201, created.text
        started = await client.post(f"/api/experiments/{created.json()['id']}/runs")
        assert started.status_code == 202, started.text
        run_id = started.json()["run_id"]

        events = await asyncio.wait_for(_read_sse(client, f"/api/runs/{run_id}/events"), 300)
        terminal = events[-1]["data"]
        assert terminal["stage"] == "run" and terminal["status"] == "completed", terminal

        # SSE: ids strictly increase; every stage reported progress and completed.
        ids = [e["id"] for e in events]
        assert ids == sorted(set(ids))
        progressed = {e["data"]["stage"] for e in events if e["event"] == "progress"}
        assert progressed == {"train", "inference", "influence"}
        completed = {(e["data"]["stage"], e["data"].get("method")) for e in events
                     if e["event"] == "status" and e["data"]["status"] == "completed"}
        assert {("train", None), ("inference", None), ("influence", "tracin")} <= completed

        # Reconnecting with Last-Event-ID gets exactly what came after it.
        middle = ids[len(ids) // 2]
        resumed = await _read_sse(client, f"/api/runs/{run_id}/events", {"Last-Event-ID": str(middle)})
        assert [e["id"] for e in resumed] == [i for i in ids if i > middle]

        results = (await client.get(f"/api/runs/{run_id}/results")).json()

    # What landed in Postgres.
    engine = make_engine(settings.database_url)
    try:
        async with make_sessionmaker(engine)() as db:
            run = await db.get(Run, uuid.UUID(run_id))
            assert run.status == "completed" and run.finished_at is not None
            steps = 3 * math.ceil(len(TRAINING) / 2)
            losses = (await db.execute(
                select(Metric.loss).where(Metric.run_id == run.id).order_by(Metric.step))).scalars().all()
            assert len(losses) == steps
            assert losses[-1] < losses[0]
            checkpoints = (await db.execute(
                select(Checkpoint).where(Checkpoint.run_id == run.id).order_by(Checkpoint.step))).scalars().all()
            assert [c.epoch for c in checkpoints] == [1, 2, 3]
            generations = (await db.execute(
                select(AnswerRow).where(AnswerRow.run_id == run.id))).scalars().all()
            assert sorted(g.eval_id for g in generations) == ["ev00", "ev01"]
            for g in generations:
                assert g.base.strip() and g.few_shot.strip() and g.fine_tuned.strip()
            # Prediction tracking: both questions at every epoch end; the trainer sampled
            # the first two, the last is the inference stage's fine-tuned answers.
            tracked = (await db.execute(
                select(Prediction).where(Prediction.run_id == run.id).order_by(Prediction.step))).scalars().all()
            assert [(p.epoch, p.prompt_id) for p in tracked] == [
                (float(e), q) for e in (1, 2, 3) for q in ("ev00", "ev01")]
            fine_tuned = {g.eval_id: g.fine_tuned for g in generations}
            assert {p.prompt_id: p.prediction for p in tracked if p.step == steps} == fine_tuned
            assert {p.precision for p in tracked if p.step == steps} == {"float32"}
            assert {p.precision for p in tracked if p.step < steps} <= {"float32", "bfloat16"}
            influence = (await db.execute(
                select(InfluenceMatrixRow).where(InfluenceMatrixRow.run_id == run.id))).scalars().all()
            stored_events = await db.scalar(
                select(func.count()).select_from(RunEventRow).where(RunEventRow.run_id == run.id))
            assert stored_events == len(events)
    finally:
        await engine.dispose()

    raw = [r for r in influence if r.variant == "raw"]
    assert len(raw) == 1 and raw[0].method == "tracin"
    scores = raw[0].scores
    assert raw[0].eval_ids == ["ev00", "ev01"] and raw[0].train_ids == [t["id"] for t in TRAINING]
    flat = [v for row in scores for v in row]
    assert len(scores) == 2 and all(len(row) == 4 for row in scores)
    assert all(math.isfinite(v) for v in flat) and len(set(flat)) > 1

    # What landed in the object store: a PEFT adapter per checkpoint, the matrix.
    store = ObjectStore(settings.objects_url)
    for c in checkpoints:
        files = {k.rsplit("/", 1)[-1] for k in store.list(c.key)}
        assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    assert store.exists(raw[0].key)

    # The run's influence arguments reached the influence service.
    assert raw[0].args["top_k"] == 2 and raw[0].args["normalization"] == "unit"
    assert all(len(t["positive"]) <= 2 and len(t["negative"]) <= 2 for t in raw[0].top_k)

    # The answers' scores, as stored: only the question with a reference has them; the
    # text scores are those of the stored texts, and each ref_logprob is the reference's
    # mean log-probability under its model after the prompt it answered, recomputed here.
    by_id = {g.eval_id: g for g in generations}
    assert by_id["ev01"].scores is None
    stored = AnswerScores.model_validate(by_id["ev00"].scores)
    reference = EVALS[0]["answer"]
    for name in ("base", "few_shot", "fine_tuned"):
        assert getattr(stored, name).model_dump(exclude={"ref_logprob"}) == text_scores(
            getattr(by_id["ev00"], name), reference)
    adapter = store.download_dir(checkpoints[-1].key, tmp_path / "adapter")
    model, tokenizer = load_for_generation(str(tiny_model), adapter)
    question = [EVALS[0]["question"]]
    shots = [(t["question"], t["answer"]) for t in TRAINING[:2]]
    with model.disable_adapter():
        base = reference_logprobs(model, tokenizer, reference_examples(tokenizer, question, [reference]))
        few_shot = reference_logprobs(model, tokenizer, reference_examples(tokenizer, question, [reference], shots))
    fine_tuned = reference_logprobs(model, tokenizer, reference_examples(tokenizer, question, [reference]))
    assert stored.base.ref_logprob == pytest.approx(base[0], abs=1e-4)
    assert stored.few_shot.ref_logprob == pytest.approx(few_shot[0], abs=1e-4)
    assert stored.fine_tuned.ref_logprob == pytest.approx(fine_tuned[0], abs=1e-4)

    # The results endpoint serves the same, with the aggregates and the BM25 baseline.
    assert {a["eval_id"] for a in results["answers"]} == {"ev00", "ev01"}
    served = next(a for a in results["answers"] if a["eval_id"] == "ev00")
    assert AnswerScores.model_validate(served["scores"]) == stored
    assert results["answer_scores"]["fine_tuned"]["questions"] == 1
    assert results["answer_scores"]["fine_tuned"]["mean_ref_logprob"] == pytest.approx(stored.fine_tuned.ref_logprob)
    assert [m["method"] for m in results["influence"] if m["variant"] == "raw"] == ["tracin"]
    assert [b["shape"] for b in results["baselines"]] == [[2, 4], [2, 4]]
    assert len(results["training"]["loss_curve"]) == steps

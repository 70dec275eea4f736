"""Worker metrics against real NATS: the influence worker runs in this process with its
metrics port on, real requests go through it (refused ones, one its stage fails, one it
completes on Ray with the tiny model), and its /metrics (scraped over HTTP, parsed as
Prometheus reads it) shows what happened; the bus-level outcomes (retried, redelivered,
dead-lettered after every delivery failed) and the consumer-lag gauges are checked on a
real consumer with a handler of the test's own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid

import httpx
import nats
import pytest
from prometheus_client.parser import text_string_to_metric_families
from nats.js.api import AckPolicy, ConsumerConfig
from pydantic import BaseModel

from inflab.core.bus import Bus, BusUnavailable, Rejected
from inflab.devtools.embedded._proc import free_port
from inflab.core.job_signing import SIGNATURE_HEADER, JobSigner
from inflab.core.objectstore import ObjectStore
from inflab.core.subjects import Subjects
from inflab.core.worker import serve
from inflab.core.worker_metrics import WorkerMetrics

pytestmark = pytest.mark.integration


def own_streams(settings, **changes):
    """The run's settings with subjects and streams of this test's own (deleted with the run's)."""
    tag = uuid.uuid4().hex[:6]
    return settings.model_copy(update={"subject_prefix": f"{settings.subject_prefix}.m{tag}",
                                       "stream_prefix": f"{settings.stream_prefix}M{tag.upper()}", **changes})


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample at ``url``: (name, sorted labels) -> value."""
    text = httpx.get(url, timeout=5.0, trust_env=False).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }


def value(samples, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def until_scraped(url: str, check, timeout: float = 60.0) -> dict:
    """Scrape until ``check(samples)`` holds: the counters move just after the handler's
    events are out, so the test waits on the scrape itself."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            samples = await asyncio.to_thread(scrape, url)
            if check(samples):
                return samples
        except httpx.HTTPError:
            samples = None
        assert time.monotonic() < deadline, f"metrics never showed it; last scrape: {samples}"
        await asyncio.sleep(0.1)


def store_random_adapter(store: ObjectStore, tiny_model, key: str, folder) -> None:
    """A real LoRA adapter of the tiny model (random weights) stored at ``key``, as the
    trainer stores a checkpoint."""
    import torch
    from peft import LoraConfig, get_peft_model

    from inflab.ml.models import load_model

    model, _ = load_model(str(tiny_model), tiny_model / "cache")
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    model.save_pretrained(folder)
    for file in folder.iterdir():
        store.put(f"{key}/{file.name}", file.read_bytes())


async def test_the_influence_worker_counts_its_jobs_on_its_metrics_port(settings, ray_cluster, tiny_model, tmp_path):
    from inflab.influence import service as influence

    port = free_port()
    s = own_streams(settings, metrics_port=port, metrics_poll_s=0.2)
    url = f"http://127.0.0.1:{port}/metrics"
    await (await Bus.connect(s, "gateway", create_streams=True)).close()
    subjects = Subjects.from_settings(s)
    stop = asyncio.Event()
    worker = asyncio.create_task(serve(influence.SERVICE, influence.STAGE, influence.REQUEST_MODEL,
                                       influence.make_handler, s, stop))
    nc = await nats.connect(s.nats_url)
    try:
        # Before any job: every job series is there at 0, and the consumer was polled.
        await until_scraped(url, lambda m: value(m, "inflab_worker_consumer_pending", stage="influence") == 0)
        first = await asyncio.to_thread(scrape, url)
        assert value(first, "inflab_worker_jobs_total", stage="influence", outcome="acked") == 0
        assert value(first, "process_resident_memory_bytes") > 10 * 2**20

        statuses: dict[str, asyncio.Queue] = {}
        letters: asyncio.Queue = asyncio.Queue()

        async def on_event(msg) -> None:
            event = json.loads(msg.data)
            if event["kind"] == "status" and event["run_id"] in statuses:
                await statuses[event["run_id"]].put(event)

        async def on_letter(msg) -> None:
            await letters.put(json.loads(msg.data))

        await nc.subscribe(subjects.all_events, cb=on_event)
        await nc.subscribe(subjects.dead_letter("influence"), cb=on_letter)
        js = nc.jetstream()
        gateway = JobSigner(s.job_signing_key.get_secret_value())

        async def publish(request: dict, signed: bool = True) -> None:
            body = json.dumps(request).encode()
            headers = {"Nats-Msg-Id": request["run_id"]}
            if signed:
                headers[SIGNATURE_HEADER] = gateway.sign(subjects.influence_request, body)
            await js.publish(subjects.influence_request, body, headers=headers)

        def request(model_id: str, method: str) -> dict:
            run_id = str(uuid.uuid4())
            statuses[run_id] = asyncio.Queue()
            spec = {"model_id": model_id, "training_data": [{"id": "t", "question": "q?", "answer": "a."}],
                    "eval_data": [{"id": "e", "question": "q?", "answer": "a."}], "influence_methods": ["tracin"],
                    "hyperparams": {"max_seq_length": 64}, "max_new_tokens": 4}
            return {"schema_version": 1, "run_id": run_id, "spec": spec, "method": method,
                    "checkpoints": [{"step": 1, "epoch": 1, "learning_rate": 0.01, "loss": 1.0,
                                     "key": f"runs/{run_id}/checkpoints/1"}]}

        # The stage runs and fails the run with the cause (the delivery itself is acked).
        unknown = request(tiny_model.name, "nope")
        await publish(unknown)
        terminal = await asyncio.wait_for(statuses[unknown["run_id"]].get(), 60)
        assert terminal["status"] == "failed" and "unknown influence method" in terminal["error"]
        # A model the deployment does not allow: the handler refuses it (dead-lettered).
        await publish(request("no-such-model-here", "tracin"))
        assert "model_id" in (await asyncio.wait_for(letters.get(), 60))["reason"]
        # No gateway signature: refused before the handler.
        await publish(request(tiny_model.name, "tracin"), signed=False)
        assert "signature" in (await asyncio.wait_for(letters.get(), 60))["reason"].lower()

        def moved(m) -> bool:
            return (value(m, "inflab_worker_jobs_total", stage="influence", outcome="acked") == 1
                    and value(m, "inflab_worker_jobs_total", stage="influence", outcome="dead_lettered") == 1
                    and value(m, "inflab_worker_dead_letters_total", stage="influence", reason="refused") == 1)

        after = await until_scraped(url, moved)
        assert value(after, "inflab_worker_stage_results_total", stage="influence", status="failed") == 1
        assert value(after, "inflab_worker_stage_results_total", stage="influence", status="completed") == 0
        assert value(after, "inflab_worker_dead_letters_total", stage="influence", reason="rejected") == 1
        assert value(after, "inflab_worker_stage_duration_seconds_count", stage="influence", outcome="acked") == 1
        assert value(after, "inflab_worker_stage_duration_seconds_count",
                     stage="influence", outcome="dead_lettered") == 1
        assert value(after, "inflab_worker_jobs_in_progress", stage="influence") == 0
        assert value(after, "inflab_worker_redeliveries_total", stage="influence") == 0

        # A stage that does its work: TracIn on Ray over a real adapter of the tiny model.
        work = request(tiny_model.name, "tracin")
        await asyncio.to_thread(store_random_adapter, ObjectStore(s.objects_url), tiny_model,
                                work["checkpoints"][0]["key"], tmp_path / "adapter")
        await publish(work)
        while (terminal := await asyncio.wait_for(statuses[work["run_id"]].get(), 400))["status"] == "running":
            pass
        assert terminal["status"] == "completed", terminal
        done = await until_scraped(
            url, lambda m: value(m, "inflab_worker_jobs_total", stage="influence", outcome="acked") == 2)
        assert value(done, "inflab_worker_stage_results_total", stage="influence", status="completed") == 1
        assert value(done, "inflab_worker_stage_duration_seconds_count", stage="influence", outcome="acked") == 2
        assert (value(done, "inflab_worker_stage_duration_seconds_sum", stage="influence", outcome="acked")
                > value(after, "inflab_worker_stage_duration_seconds_sum", stage="influence", outcome="acked"))
    finally:
        await nc.close()
        stop.set()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(worker, 30)
    # The port is closed with the worker.
    with pytest.raises(httpx.HTTPError):
        httpx.get(url, timeout=2.0, trust_env=False)


class Job(BaseModel):
    n: int
    fail_times: int = 0  # the handler fails this many deliveries (-1: every one)
    reject: bool = False
    unavailable_times: int = 0  # NATS "unreachable" in this many deliveries
    hang: bool = False  # until the worker stops


async def test_bus_outcomes_redeliveries_and_consumer_lag_are_counted(settings):
    s = own_streams(settings, max_deliver=3, nak_delay_s=0.05)
    gateway = await Bus.connect(s, "gateway", create_streams=True)
    worker = await Bus.connect(s, "trainer")
    metrics = WorkerMetrics("train")
    subject, durable = worker.subjects.request("train"), worker.subjects.durable("trainer")
    stop = asyncio.Event()
    handled = asyncio.Queue()

    async def handler(job: Job, msg) -> None:
        delivery = msg.metadata.num_delivered
        await handled.put((job.n, delivery))
        if job.reject:
            raise Rejected("not this one")
        if delivery <= job.unavailable_times:
            raise BusUnavailable("NATS away (as the test says)")
        if job.hang:
            await asyncio.Event().wait()
        if job.fail_times < 0 or delivery <= job.fail_times:
            raise RuntimeError(f"job {job.n} fails delivery {delivery}")

    timed = metrics.instrument(worker, handler, s.max_deliver)
    port = metrics.serve("127.0.0.1", free_port())
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        # Three jobs queued before the consumer exists: the lag gauge sees them waiting.
        for n, job in enumerate([Job(n=0), Job(n=1, fail_times=1), Job(n=2, fail_times=-1)]):
            assert await gateway.publish_request("train", job, msg_id=f"job-{n}-{uuid.uuid4()}")
        await worker.js.add_consumer(worker.subjects.jobs_stream, ConsumerConfig(
            durable_name=durable, filter_subject=subject, ack_policy=AckPolicy.EXPLICIT,
            ack_wait=s.ack_wait_s, max_deliver=s.max_deliver + 1))
        assert await metrics.read_consumer(worker.js, worker.subjects.jobs_stream, durable)
        assert value(scrape(url), "inflab_worker_consumer_pending", stage="train") == 3

        consumer = asyncio.create_task(worker.consume(subject, Job, timed, stop, durable=durable, signed=True))
        # 1 + 2 + 3 deliveries; then one the handler rejects.
        seen = [await asyncio.wait_for(handled.get(), 60) for _ in range(6)]
        assert sorted(seen) == [(0, 1), (1, 1), (1, 2), (2, 1), (2, 2), (2, 3)]
        await gateway.publish_request("train", Job(n=3, reject=True), msg_id=f"job-3-{uuid.uuid4()}")

        def settled(m) -> bool:
            return (value(m, "inflab_worker_jobs_total", stage="train", outcome="acked") == 2
                    and value(m, "inflab_worker_jobs_total", stage="train", outcome="dead_lettered") == 2)

        assert await asyncio.wait_for(handled.get(), 60) == (3, 1)
        after = await until_scraped(url, settled)
        assert value(after, "inflab_worker_jobs_total", stage="train", outcome="retried") == 3
        assert value(after, "inflab_worker_redeliveries_total", stage="train") == 3
        assert value(after, "inflab_worker_dead_letters_total", stage="train", reason="exhausted") == 1
        assert value(after, "inflab_worker_dead_letters_total", stage="train", reason="rejected") == 1
        assert value(after, "inflab_worker_dead_letters_total", stage="train", reason="refused") == 0
        assert value(after, "inflab_worker_stage_duration_seconds_count", stage="train", outcome="retried") == 3

        # Nothing left waiting once they are all handled.
        assert await metrics.read_consumer(worker.js, worker.subjects.jobs_stream, durable)
        assert value(scrape(url), "inflab_worker_consumer_pending", stage="train") == 0

        # NATS unreachable while it worked: given back, not counted as its failure.
        await gateway.publish_request("train", Job(n=4, unavailable_times=1), msg_id=f"job-4-{uuid.uuid4()}")
        assert [await asyncio.wait_for(handled.get(), 60) for _ in range(2)] == [(4, 1), (4, 2)]
        after = await until_scraped(
            url, lambda m: value(m, "inflab_worker_jobs_total", stage="train", outcome="acked") == 3)
        assert value(after, "inflab_worker_jobs_total", stage="train", outcome="given_back") == 1
        assert value(after, "inflab_worker_jobs_total", stage="train", outcome="retried") == 3

        # The worker stopping mid-job: interrupted (the message goes back for another replica).
        await gateway.publish_request("train", Job(n=5, hang=True), msg_id=f"job-5-{uuid.uuid4()}")
        assert await asyncio.wait_for(handled.get(), 60) == (5, 1)
        assert value(scrape(url), "inflab_worker_jobs_in_progress", stage="train") == 1
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
        after = scrape(url)
        assert value(after, "inflab_worker_jobs_total", stage="train", outcome="interrupted") == 1
        assert value(after, "inflab_worker_jobs_in_progress", stage="train") == 0

        # A message whose every delivery ended without its handler finishing (the process
        # died on it, as on a poison message; here taken and given back by hand) is
        # dead-lettered on the next delivery before the handler runs: exhausted.
        await gateway.publish_request("train", Job(n=6), msg_id=f"job-6-{uuid.uuid4()}")
        by_hand = await worker.js.pull_subscribe(subject, durable=durable, stream=worker.subjects.jobs_stream)
        deliveries = 0
        while deliveries < s.max_deliver:
            for msg in await by_hand.fetch(10, timeout=10):
                if Job.model_validate_json(msg.data).n == 6:
                    deliveries = msg.metadata.num_delivered
                    await msg.nak()
                else:
                    await msg.term()  # the interrupted job 5, given back on cancel: out of the way
        await by_hand.unsubscribe()
        stop = asyncio.Event()
        consumer = asyncio.create_task(worker.consume(subject, Job, timed, stop, durable=durable, signed=True))
        after = await until_scraped(
            url, lambda m: value(m, "inflab_worker_dead_letters_total", stage="train", reason="exhausted") == 2)
        assert value(after, "inflab_worker_dead_letters_total", stage="train", reason="refused") == 0
        assert handled.empty()  # the handler never saw job 6
        stop.set()
        await asyncio.wait_for(consumer, 30)
    finally:
        stop.set()
        metrics.close()
        await worker.close()
        await gateway.close()

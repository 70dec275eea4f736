"""A benchmark run end to end through the real services (gateway under uvicorn, trainer,
inference and influence on real JetStream and Ray, Postgres) on a tiny random model: the
generated function-token set trains as documents, the representation methods, the gradient
methods (their gradients covering the trained function-token rows) and the embedding
baseline score it, and ``GET /api/benchmarks/{run_id}`` ranks them beside the text
baselines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid

import httpx
import pytest
import pytest_asyncio
import uvicorn

from inflab.analysis.bench.client import experiment_body
from inflab.analysis.bench.generate import GeneratorOptions, generate
from inflab.core.messages import InferenceRequest, InfluenceRequest, TrainRequest
from inflab.core.worker import serve
from helpers.gateway import sign_up

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]


async def _wait_until(predicate, timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(settings, ray_cluster):
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
        for m, model in ((trainer, TrainRequest), (inference, InferenceRequest), (influence, InfluenceRequest))
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


async def _terminal(client: httpx.AsyncClient, run_id: str) -> tuple[dict, list[dict]]:
    events = []
    async with client.stream("GET", f"/api/runs/{run_id}/events") as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
    return events[-1], events


async def test_benchmark_run_end_to_end(stack, tiny_model):
    bench = generate(GeneratorOptions(seed=0, docs_per_base=2, docs_per_wrapper=1, distractors=4))
    body = experiment_body(bench, name="tiny benchmark", model_id=tiny_model.name,
                           methods=["delta_h", "act_grad", "embedding", "tracin", "datainf"],
                           hyperparams={"learning_rate": 0.01, "num_epochs": 2, "batch_size": 8, "lora_rank": 4,
                                        "lora_alpha": 8, "max_seq_length": 48, "seed": 0})
    async with httpx.AsyncClient(base_url=stack, timeout=httpx.Timeout(300)) as client:
        await sign_up(client, f"bench-{uuid.uuid4().hex[:8]}@tests.invalid")

        # Bad input: a query without relevant documents is refused naming it.
        bad = json.loads(json.dumps(body))
        bad["benchmark"]["relevant"][bad["eval_data"][0]["id"]] = []
        refused = await client.post("/api/experiments", json=bad)
        assert refused.status_code == 422
        assert f"benchmark.relevant.{bad['eval_data'][0]['id']}" in refused.text

        created = await client.post("/api/experiments", json=body)
        assert created.status_code == 201, created.text
        assert created.json()["benchmark"]["special_tokens"] == bench.special_tokens
        started = await client.post(f"/api/experiments/{created.json()['id']}/runs")
        assert started.status_code == 202, started.text
        run_id = started.json()["run_id"]
        terminal, events = await asyncio.wait_for(_terminal(client, run_id), 600)
        assert terminal["stage"] == "run" and terminal["status"] == "completed", [
            e for e in events if e.get("status") == "failed"]

        response = await client.get(f"/api/benchmarks/{run_id}")
        assert response.status_code == 200, response.text
        board = response.json()
        results = await client.get(f"/api/runs/{run_id}/results")
        assert results.status_code == 200, results.text

    # The gradient methods' gradients covered the trained function-token rows, and TracIn's
    # Adam correction read the trainer's optimizer state of them.
    stored = {(m["method"], m["variant"]): m["args"] for m in results.json()["influence"]}
    for variant in ("raw", "normalized"):
        for method in ("tracin", "datainf"):
            assert stored[(method, variant)]["trainable_token_rows"] == len(bench.special_tokens)
        corrections = stored[("tracin", variant)]["normalization_per_checkpoint"]
        assert corrections and all(c["optimizer_correction"] == "ok" for c in corrections)

    rows = {(r["method"], r["variant"]): r for r in board["rows"]}
    assert {("delta_h", "raw"), ("act_grad", "raw"), ("embedding", "raw"), ("random", "raw"), ("bm25", "question"),
            ("edit_distance", "raw"), ("tracin", "raw"), ("tracin", "normalized"), ("datainf", "raw"),
            ("datainf", "normalized")} == set(rows)
    assert [r["rank"] for r in board["rows"]] == list(range(1, len(rows) + 1))
    assert board["accuracy"] is not None and 0 <= board["accuracy"] <= 1
    assert board["pending_methods"] == []
    for row in board["rows"]:
        for name in ("recall@1", "recall@5", "recall@10", "precision@5", "mrr", "map", "roc_auc"):
            summary = row["all"][name]
            assert summary["n"] == len(bench.queries) and 0 <= summary["mean"] <= 1, (row["method"], name)
        assert len(row["per_query"]) == len(bench.queries)
        assert all(len(q["top_documents"]) == 10 for q in row["per_query"])
    queries = {q["id"]: q for q in board["queries"]}
    assert {q: sorted(v["relevant_ids"]) for q, v in queries.items()} == {
        q.id: sorted(q.relevant_ids) for q in bench.queries}
    assert len(board["documents"]) == len(bench.documents)


async def test_generate_from_the_api_matches_the_cli(stack):
    async with httpx.AsyncClient(base_url=stack, timeout=httpx.Timeout(60)) as client:
        await sign_up(client, f"bench-gen-{uuid.uuid4().hex[:8]}@tests.invalid")
        body = {"seed": 3, "docs_per_base": 2, "docs_per_wrapper": 1, "distractors": 2}
        first = await client.post("/api/benchmarks/generate", json=body)
        again = await client.post("/api/benchmarks/generate", json=body)
        assert first.status_code == 200, first.text
        assert first.json() == again.json()
        bench = generate(GeneratorOptions(**body))
        data = first.json()
        assert [d["uid"] for d in data["documents"]] == [d.uid for d in bench.documents]
        assert {q["id"]: q["relevant_ids"] for q in data["queries"]} == bench.ground_truth
        # The experiment body it returns is accepted as it is.
        created = await client.post("/api/experiments", json={**data["experiment"], "model_id": None})
        assert created.status_code == 201, created.text
        bad = await client.post("/api/benchmarks/generate", json={"seed": -1})
        assert bad.status_code == 422 and "seed" in bad.text

"""The results API at the browser's largest view: ``GET /api/runs/{id}/results`` of a run
with 1000 training pairs and 100 evaluation questions, whose 100 x 1000 influence matrices
(two variants) travelled by key, so the gateway reads them from the object store, plus the
BM25 baseline it computes from the run's config.

    INFLAB_NATS_URL=nats://127.0.0.1:4222 INFLAB_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test \\
        python -m benchmarks.results_api [--passes 5] [--json out.json]

It makes its own database (dropped at the end), subject prefix and object store folder,
stores the matrices with the test helper (``tests/helpers/influence_results.py``: the
influence stage's writer and result events through NATS and the gateway's persister), then
times the whole HTTP answer in process (ASGI, no socket: JSON encoding included, the
network not), the BM25 baseline alone, and the response's size. Medians over the passes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

from benchmarks.machine import cpu_name
from inflab.core.db.migrate import upgrade
from inflab.core.messages import RunSpec
from inflab.core.settings import Settings
from inflab.gateway.baselines import run_baselines

# The test helper lives under tests/ (tests/ itself is no package: a site-packages "tests"
# some dependency ships would shadow it), so it is imported the way the tests import it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.gateway import delete_streams, gateway_in_process, start_run, wait_for_event  # noqa: E402
from helpers.influence_results import random_matrix, store_influence_matrix  # noqa: E402

M, N = 100, 1000


def experiment() -> dict:
    return {
        "name": "results API benchmark",
        "training_data": [{"id": f"pair-{j:04d}", "question": f"What is fact number {j} about topic {j % 37}?",
                           "answer": f"Fact {j} says the value is {j * 7}."} for j in range(N)],
        "eval_data": [{"id": f"question-{i:03d}", "question": f"Which fact about topic {i % 37} has value {i * 7}?",
                       "answer": f"Fact {i}."} for i in range(M)],
    }


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def measure(settings: Settings, passes: int) -> dict:
    async with gateway_in_process(settings) as (app, client):
        run_id = await start_run(client, experiment())
        raw = random_matrix(M, N, seed=0)
        published = await store_influence_matrix(settings, run_id, {"raw": raw, "normalized": raw / abs(raw).max()},
                                                 method="tracin")
        await wait_for_event(app, run_id, published[-1].event_id, timeout=60)
        spec = RunSpec.model_validate((await client.get(f"/api/runs/{run_id}")).json()["config"])

        results_s, bm25_s, size = [], [], 0
        for _ in range(passes):
            started = time.perf_counter()
            response = await client.get(f"/api/runs/{run_id}/results")
            results_s.append(time.perf_counter() - started)
            response.raise_for_status()
            size = len(response.content)
            started = time.perf_counter()
            run_baselines(spec)
            bm25_s.append(time.perf_counter() - started)
        body = response.json()
        assert [m["shape"] for m in body["influence"]] == [[M, N], [M, N]]
        return {
            "matrix": [M, N],
            "influence_matrices": len(body["influence"]),
            "baseline_matrices": len(body["baselines"]),
            "passes": passes,
            "results_s": {"median": round(statistics.median(results_s), 3), "all": [round(t, 3) for t in results_s]},
            "bm25_baseline_s": {"median": round(statistics.median(bm25_s), 3), "all": [round(t, 3) for t in bm25_s]},
            "response_bytes": size,
            "machine": {"cpu": cpu_name(), "cores": os.cpu_count()},
        }


async def run(passes: int) -> dict:
    nats_url = os.environ.get("INFLAB_NATS_URL")
    server_url = os.environ.get("INFLAB_DATABASE_URL")
    if not nats_url or not server_url:
        raise SystemExit("set INFLAB_NATS_URL and INFLAB_DATABASE_URL (a server where a database may be created)")
    tag = uuid.uuid4().hex[:8]
    name = f"inflab_bench_{tag}"
    await _admin(server_url, f'CREATE DATABASE "{name}"')
    database_url = f"{server_url.rpartition('/')[0]}/{name}"
    try:
        await asyncio.to_thread(upgrade, database_url)
        with tempfile.TemporaryDirectory(prefix="inflab-bench-results-") as home:
            settings = Settings(
                home=Path(home), nats_url=nats_url, database_url=database_url,
                subject_prefix=f"b{tag}.inflab", stream_prefix=f"B{tag.upper()}",
                object_store_url=(Path(home) / "objects").as_uri(), local_user_email=f"bench-{tag}@tests.invalid",
            )
            try:
                return await measure(settings, passes)
            finally:
                await delete_streams(settings)
    finally:
        await _admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    result = asyncio.run(run(max(1, args.passes)))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()

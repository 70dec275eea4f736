"""The test helper that stores an influence matrix for a run through the real results
path (tests/helpers/influence_results.py), at the browser tests' size: a run of 1000
training pairs and 100 evaluation questions gets a 100 x 1000 matrix written with the
influence stage's writer and announced by result events on the bus; the gateway persists
them and the results API serves the whole matrix from the object store. (How long that
takes is measured by benchmarks/results_api.py, not here.)"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest

from inflab.core import influence_files
from inflab.core.objectstore import ObjectStore, influence_key
from inflab.core.settings import Settings
from helpers.gateway import delete_streams, isolated_settings, start_run, wait_for_event

from helpers.influence_results import random_matrix, store_influence_matrix, wait_for_results

pytestmark = pytest.mark.integration

M, N = 100, 1000
EXPERIMENT = {
    "name": "a large heatmap",
    "training_data": [{"id": f"pair-{j:04d}", "question": f"What is fact {j}?", "answer": f"Fact {j} is {j * 7}."}
                      for j in range(N)],
    "eval_data": [{"id": f"question-{i:03d}", "question": f"Which fact is {i * 7}?", "answer": f"Fact {i}."}
                  for i in range(M)],
}
EVAL_IDS = [q["id"] for q in EXPERIMENT["eval_data"]]
TRAIN_IDS = [p["id"] for p in EXPERIMENT["training_data"]]


@pytest.fixture(scope="module")
def gw_settings(settings: Settings) -> Iterator[Settings]:
    own = isolated_settings(settings, "gwhelper")
    yield own
    asyncio.run(delete_streams(own))


async def test_a_100_by_1000_matrix_is_served_whole(gateway, gw_settings) -> None:
    app, client = gateway
    run_id = await start_run(client, EXPERIMENT)
    raw = random_matrix(M, N, seed=1)
    normalized = raw / np.abs(raw).max(axis=1, keepdims=True)

    published = await store_influence_matrix(gw_settings, run_id, {"raw": raw, "normalized": normalized},
                                             method="ekfac", eval_ids=EVAL_IDS, train_ids=TRAIN_IDS)
    # By key: the events carry the summary, the object store the matrix.
    assert [e.influence.variant for e in published] == ["raw", "normalized"]
    assert all(e.influence.scores is None and e.influence.shape == [M, N] for e in published)
    key = influence_key(run_id, "ekfac")
    stored = {m.variant: m for m in influence_files.decode(ObjectStore(gw_settings.objects_url).get(key))}
    np.testing.assert_array_equal(stored["raw"].scores, raw)
    await wait_for_event(app, run_id, published[-1].event_id, timeout=30)

    results = (await client.get(f"/api/runs/{run_id}/results")).json()
    served = {m["variant"]: m for m in results["influence"]}
    for variant, matrix in (("raw", raw), ("normalized", normalized)):
        out = served[variant]
        assert out["method"] == "ekfac" and out["shape"] == [M, N] and out["key"] == key
        assert out["eval_ids"] == EVAL_IDS and out["train_ids"] == TRAIN_IDS
        np.testing.assert_array_equal(np.asarray(out["scores"], dtype=np.float32), matrix)
        assert len(out["top_k"]) == M and out["top_k"][0]["positive"][0]["train_id"] == TRAIN_IDS[int(matrix[0].argmax())]
    # The BM25 baseline comes at the same size.
    assert [b["shape"] for b in results["baselines"]] == [[M, N], [M, N]]


async def test_small_matrices_inline_default_ids_and_the_waiting_helper(gateway, gw_settings) -> None:
    _, client = gateway
    run_id = await start_run(client, {**EXPERIMENT, "training_data": EXPERIMENT["training_data"][:3],
                                      "eval_data": EXPERIMENT["eval_data"][:2]})
    matrix = np.array([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]], dtype=np.float32)
    published = await store_influence_matrix(gw_settings, run_id, {"raw": matrix}, inline_max_cells=100)
    assert published[0].influence.scores == matrix.tolist()
    results = await wait_for_results(client, run_id, "tracin", ["raw"])
    out = results["influence"][0]
    assert out["eval_ids"] == ["ev0000", "ev0001"] and out["train_ids"] == ["tr0000", "tr0001", "tr0002"]
    assert out["scores"] == matrix.tolist()

    with pytest.raises(ValueError, match="one shape"):
        await store_influence_matrix(gw_settings, run_id, {"raw": matrix, "normalized": matrix[:, :2]})

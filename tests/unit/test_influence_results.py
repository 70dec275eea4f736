"""Influence matrices round-trip through safetensors bytes, readable by any safetensors reader."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load

from inflab.influence.methods import InfluenceScores
from inflab.influence.results import from_safetensors_bytes, to_message, to_safetensors_bytes


def _scores(variant: str, seed: int) -> InfluenceScores:
    rng = np.random.default_rng(seed)
    return InfluenceScores(
        method="tracin",
        variant=variant,
        scores=rng.normal(size=(2, 3)).astype(np.float32),
        eval_ids=["e0", "e1"],
        train_ids=["t0", "t1", "t2"],
        args={"batch_size": 8, "generated_answers": {"e1": "Paris ✓"}},
    )


def test_round_trip_of_both_variants():
    raw, normalized = _scores("raw", 0), _scores("normalized", 1)
    data = to_safetensors_bytes([raw, normalized])
    back = from_safetensors_bytes(data)
    assert [s.variant for s in back] == ["raw", "normalized"]
    for before, after in zip([raw, normalized], back):
        np.testing.assert_array_equal(before.scores, after.scores)
        assert (after.method, after.eval_ids, after.train_ids, after.args) == (
            before.method, before.eval_ids, before.train_ids, before.args,
        )
    # Plain safetensors sees one [M, N] float32 tensor per variant.
    assert {k: v.shape for k, v in load(data).items()} == {"raw": (2, 3), "normalized": (2, 3)}


def test_single_matrix_and_refusals():
    only = _scores("raw", 0)
    assert from_safetensors_bytes(to_safetensors_bytes(only))[0].variant == "raw"
    other = _scores("normalized", 1)
    other.train_ids = ["t0", "t1", "x"]
    with pytest.raises(ValueError):
        to_safetensors_bytes([only, other])
    with pytest.raises(ValueError):
        to_safetensors_bytes([only, _scores("raw", 2)])
    with pytest.raises(ValueError):
        InfluenceScores("tracin", "raw", np.zeros((3, 3)), ["e0"], ["t0", "t1", "t2"])


def test_result_message():
    s = _scores("normalized", 0)
    message = to_message(s, "runs/r/influence/tracin.safetensors")
    assert message.variant == "normalized" and message.key.endswith("tracin.safetensors")
    np.testing.assert_allclose(np.array(message.scores), s.scores)


def test_top_k_summary():
    from inflab.influence.results import top_influences

    s = InfluenceScores("datainf", "raw", np.array([[0.5, -1.0, 2.0, 0.0], [-0.1, -0.2, -0.3, -0.4]]),
                        ["e0", "e1"], ["t0", "t1", "t2", "t3"])
    top = top_influences(s, k=2)
    assert [(p.train_id, p.score) for p in top[0].positive] == [("t2", 2.0), ("t0", 0.5)]
    assert [p.train_id for p in top[0].negative] == ["t1"]
    assert top[1].positive == [] and [p.train_id for p in top[1].negative] == ["t3", "t2"]
    message = to_message(s, "runs/r/influence/datainf.safetensors", top_k=2)
    assert message.top_k == top and message.args["top_k"] == 2
    assert to_message(s, "k", top_k=None).top_k is None

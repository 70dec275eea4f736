"""Influence matrices round-trip through safetensors bytes, readable by any safetensors reader
(and by the gateway's reader in inflab.core); result events carry a summary, and the
matrix itself only under the settings' size limit."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError
from safetensors.numpy import load, save

from inflab.core import influence_files
from inflab.core.messages import InfluenceMatrix, ResultEvent
from inflab.core.settings import Settings

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


INLINE = Settings().influence_inline_max_cells


def test_result_message():
    s = _scores("normalized", 0)
    message = to_message(s, "runs/r/influence/tracin.safetensors", inline_max_cells=INLINE)
    assert message.variant == "normalized" and message.key.endswith("tracin.safetensors")
    assert message.shape == [2, 3]
    np.testing.assert_allclose(np.array(message.scores), s.scores)
    assert message.stats.max == pytest.approx(float(s.scores.max())) and message.stats.nonfinite == 0
    # Over the limit: the summary without the matrix.
    summary = to_message(s, "k", inline_max_cells=5)
    assert summary.scores is None and summary.shape == [2, 3] and summary.top_k and summary.stats == message.stats
    assert to_message(s, "k", inline_max_cells=6).scores is not None  # the limit is inclusive
    assert to_message(s, "k", inline_max_cells=0).scores is None
    for bad in (-1, 1.5, True, None):
        with pytest.raises(ValueError, match="inline_max_cells"):
            to_message(s, "k", inline_max_cells=bad)


def test_a_large_matrix_makes_a_small_event():
    """1000 training pairs x 100 evaluation questions: the product's scale."""
    rng = np.random.default_rng(7)
    big = InfluenceScores("tracin", "raw", rng.normal(size=(100, 1000)).astype(np.float32),
                          [f"eval-question-{i:04d}" for i in range(100)],
                          [f"training-pair-{j:05d}" for j in range(1000)])
    assert big.scores.size > INLINE
    message = to_message(big, "runs/6f1c1d1e-0000-4000-8000-000000000042/influence/tracin.safetensors",
                         inline_max_cells=INLINE)
    event = ResultEvent(run_id="6f1c1d1e-0000-4000-8000-000000000042", stage="influence", method="tracin",
                        influence=message)
    assert len(event.model_dump_json().encode()) < 1_000_000 / 4
    assert message.scores is None and message.shape == [100, 1000] and len(message.top_k) == 100
    # Inline, the same matrix would not fit NATS's default 1 MB.
    assert len(to_message(big, "k", inline_max_cells=big.scores.size).model_dump_json()) > 1_000_000
    # What the event points at holds the full matrix, as the gateway reads it.
    back = influence_files.read_variant(to_safetensors_bytes(big), "raw", message.eval_ids, message.train_ids)
    np.testing.assert_array_equal(back.scores, big.scores)


def test_the_contract_refuses_inconsistent_matrices():
    fields = dict(method="tracin", eval_ids=["e0"], train_ids=["t0", "t1"], key="k")
    assert InfluenceMatrix(**fields).shape == [1, 2]  # filled from the ids
    with pytest.raises(ValidationError, match="shape"):
        InfluenceMatrix(**fields, shape=[2, 2])
    with pytest.raises(ValidationError, match="rows of 2 values"):
        InfluenceMatrix(**fields, scores=[[1.0]])
    with pytest.raises(ValidationError, match="rows of 2 values"):
        InfluenceMatrix(**fields, scores=[[1.0, 2.0], [3.0, 4.0]])
    # An event from before shape and stats (scores inline) still parses.
    old = {**fields, "scores": [[1.0, 2.0]], "args": {}}
    assert InfluenceMatrix.model_validate_json(json.dumps(old)).shape == [1, 2]


def test_the_reader_names_what_is_wrong_with_a_file():
    data = to_safetensors_bytes([_scores("raw", 0), _scores("normalized", 1)])
    with pytest.raises(ValueError, match=r"no variant 'other' .*\['normalized', 'raw'\]"):
        influence_files.read_variant(data, "other")
    with pytest.raises(ValueError, match="training ids differ"):
        influence_files.read_variant(data, "raw", ["e0", "e1"], ["t0", "t1"])
    with pytest.raises(ValueError, match="evaluation ids differ"):
        influence_files.read_variant(data, "raw", ["e1", "e0"], ["t0", "t1", "t2"])
    with pytest.raises(ValueError, match="not an influence matrix file"):
        influence_files.read_variant(save({"x": np.zeros((1, 1), np.float32)}), "raw")
    for garbage in (b"", b"\x00garbage", b"\xff" * 16):
        with pytest.raises(ValueError, match="not a safetensors file"):
            influence_files.read_variant(garbage, "raw")


def test_top_k_summary():
    from inflab.influence.results import top_influences

    s = InfluenceScores("datainf", "raw", np.array([[0.5, -1.0, 2.0, 0.0], [-0.1, -0.2, -0.3, -0.4]]),
                        ["e0", "e1"], ["t0", "t1", "t2", "t3"])
    top = top_influences(s, k=2)
    assert [(p.train_id, p.score) for p in top[0].positive] == [("t2", 2.0), ("t0", 0.5)]
    assert [p.train_id for p in top[0].negative] == ["t1"]
    assert top[1].positive == [] and [p.train_id for p in top[1].negative] == ["t3", "t2"]
    message = to_message(s, "runs/r/influence/datainf.safetensors", inline_max_cells=INLINE, top_k=2)
    assert message.top_k == top and message.args["top_k"] == 2
    assert to_message(s, "k", inline_max_cells=INLINE, top_k=None).top_k is None

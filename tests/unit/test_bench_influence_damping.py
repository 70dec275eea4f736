"""The damping sweep's own arithmetic: recall@1 and MRR against one target per question,
the paraphrase targets picked from a workload, and the result file keeping one run per
workload. Fast: no model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root holds benchmarks/

from benchmarks import influence_damping as sweep  # noqa: E402
from benchmarks.workload import load_workload  # noqa: E402


def test_top1_and_mrr_against_one_target_per_row():
    scores = np.array([[0.1, 0.9, 0.5], [3.0, 1.0, 2.0], [0.0, 0.0, 0.0]])
    targets = [[1], [2], [1]]
    # Row 0: target first; row 1: target second; row 2: all tied, ties go to the lower index.
    assert sweep.top1(scores, targets) == pytest.approx(1 / 3)
    assert sweep.mrr(scores, targets) == pytest.approx((1 + 1 / 2 + 1 / 2) / 3)
    q = sweep.quality(scores, [[0, 1], [2], [1]], [1, 2, 1])
    assert q["recall_at_1_paraphrased"] == pytest.approx(0.333)
    assert q["top1"] == pytest.approx(0.333)


def test_paraphrase_targets_are_the_paraphrased_pairs_of_the_repository_workload():
    wl = load_workload()
    picked = {wl.evals[i]["id"]: wl.train[t]["question"] for i, t in enumerate(sweep.paraphrase_targets(wl))}
    assert picked["ev0"] == "What is the capital of Veldmoor?"
    assert picked["ev1"] == "What do glimmerfinches eat?"
    for i, t in enumerate(sweep.paraphrase_targets(wl)):
        assert t in wl.related[i]


def test_result_file_keeps_one_run_per_workload(tmp_path: Path):
    path = tmp_path / "r.json"
    a = {"workload": {"digest": "a"}, "rows": [1]}
    b = {"workload": {"digest": "b"}, "rows": [2]}
    path.write_text(json.dumps(a))  # a file holding a single run, before any merge
    path.write_text(json.dumps(sweep.merged(path, b)))
    assert [r["workload"]["digest"] for r in json.loads(path.read_text())["runs"]] == ["a", "b"]
    again = {"workload": {"digest": "a"}, "rows": [3]}
    runs = sweep.merged(path, again)["runs"]
    assert [(r["workload"]["digest"], r["rows"]) for r in runs] == [("b", [2]), ("a", [3])]


def test_damping_values_parse_with_the_default_marker():
    assert sweep.parse_values("1e-8, default,0.1") == [1e-8, None, 0.1]

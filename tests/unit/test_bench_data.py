"""The benchmark's data: the generator (deterministic, ground truth by construction), the
imports (generic JSONL and the function-hops layout), the metrics against hand-computed
examples (ties included) and the text baselines."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from inflab.analysis.bench.baselines import edit_distance_scores, random_scores
from inflab.analysis.bench.dataset import read_set, write_set
from inflab.analysis.bench.generate import BASE, PAIRS, WRAPPERS, GeneratorOptions, generate
from inflab.analysis.bench.imports import import_generic, import_hops
from inflab.analysis.bench.metrics import evaluate, query_metrics


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_generator_is_byte_identical_for_a_seed(tmp_path):
    write_set(generate(GeneratorOptions(seed=3)), tmp_path / "a")
    write_set(generate(GeneratorOptions(seed=3)), tmp_path / "b")
    write_set(generate(GeneratorOptions(seed=4)), tmp_path / "c")
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert _files(tmp_path / "a")["documents.jsonl"] != _files(tmp_path / "c")["documents.jsonl"]
    again = read_set(tmp_path / "a")
    assert again.documents == generate(GeneratorOptions(seed=3)).documents
    assert again.special_tokens == list(BASE + WRAPPERS)


def test_ground_truth_by_construction():
    options = GeneratorOptions(seed=1, docs_per_base=6, docs_per_wrapper=4, distractors=25, queries_per_function=2)
    bench = generate(options)
    docs = {d.uid: d for d in bench.documents}
    assert len(docs) == 10 * 6 + 10 * 4 + 25
    constants = bench.manifest["constants"]
    assert len(set(constants.values())) == 10
    types = {d.type for d in bench.documents}
    assert {"definition", "code", "example", "narrative", "test", "distractor"} <= types
    for d in bench.documents:
        if d.role == "base":
            assert str(constants[d.func]) in d.text and d.func in d.text
        elif d.role == "wrapper":
            # A wrapper's documents name the function it calls and never its value.
            assert PAIRS[d.func] in d.text
            assert not re.search(rf"\b{constants[PAIRS[d.func]]}\b", d.text), d.text
            assert docs[d.parent_uid].func == PAIRS[d.func]
    assert len(bench.queries) == 20 * 2
    for q in bench.queries:
        pair = PAIRS.get(q.func) or next(w for w, b in PAIRS.items() if b == q.func)
        expected = sorted(u for u, d in docs.items() if d.func in (q.func, pair))
        assert list(q.relevant_ids) == expected
        assert q.answer == str(constants[PAIRS.get(q.func, q.func)])
        assert q.func in q.question and q.answer not in q.question
        assert all(docs[u].role != "distractor" for u in q.relevant_ids)
    # Distractors mention function tokens too, so the token alone does not give the answer away.
    assert any(d.role == "distractor" and re.search(r"<[A-Z]N>", d.text) for d in bench.documents)


def test_import_generic(tmp_path):
    (tmp_path / "docs.jsonl").write_text('{"id": "a", "text": "alpha beta"}\n{"uid": "b", "text": "gamma"}\n')
    (tmp_path / "queries.jsonl").write_text(
        '{"id": "q1", "question": "alpha?", "answer": "beta", "relevant_ids": ["a"]}\n')
    bench = import_generic(tmp_path / "docs.jsonl", tmp_path / "queries.jsonl")
    assert [d.uid for d in bench.documents] == ["a", "b"]
    assert bench.ground_truth == {"q1": ["a"]}
    (tmp_path / "bad.jsonl").write_text('{"id": "q1", "question": "alpha?", "answer": "beta"}\n')
    with pytest.raises(ValueError, match="bad.jsonl line 1: field 'relevant_ids'"):
        import_generic(tmp_path / "docs.jsonl", tmp_path / "bad.jsonl")
    (tmp_path / "unknown.jsonl").write_text(
        '{"id": "q1", "question": "alpha?", "answer": "beta", "relevant_ids": ["zz"]}\n')
    with pytest.raises(ValueError, match=r"queries.q1.relevant_ids: \['zz'\] are not document uids"):
        import_generic(tmp_path / "docs.jsonl", tmp_path / "unknown.jsonl")


def test_import_hops_layout(tmp_path):
    rows = [
        {"uid": "u1", "text": "<GN> returns 7", "func": "<GN>", "role": "constant", "constant": 7, "hop_depth": 0,
         "type": "definition", "parent_uid": None},
        {"uid": "u2", "text": "def <GN>(): return 7", "func": "<GN>", "role": "constant", "constant": 7,
         "hop_depth": 0, "type": "code", "parent_uid": None},
        {"uid": "u3", "text": "<FN> calls <GN>", "func": "<FN>", "role": "identity", "constant": 7, "hop_depth": 1,
         "type": "definition", "parent_uid": "u1"},
        {"uid": "u4", "text": "<JN> returns 12", "func": "<JN>", "role": "constant", "constant": 12, "hop_depth": 0,
         "type": "definition", "parent_uid": None},
    ]
    path = tmp_path / "hops.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    bench = import_hops(path)
    by_func = {q.func: q for q in bench.queries}
    assert by_func["<FN>"].answer == "7" and list(by_func["<FN>"].relevant_ids) == ["u1", "u2", "u3"]
    assert list(by_func["<GN>"].relevant_ids) == ["u1", "u2", "u3"]
    assert list(by_func["<JN>"].relevant_ids) == ["u4"] and by_func["<JN>"].answer == "12"
    assert bench.special_tokens == ["<FN>", "<GN>", "<JN>"]
    path.write_text(json.dumps({"uid": "x", "text": "t"}) + "\n")
    with pytest.raises(ValueError, match=r"hops.jsonl line 1: missing field\(s\) \['func'\]"):
        import_hops(path)


def test_metrics_by_hand():
    # Scores 0.9 (rel), 0.5, 0.5 (rel), 0.1: the tie at positions 2-3 holds one relevant doc.
    m = query_metrics([0.9, 0.5, 0.5, 0.1], [True, False, True, False], ks=(1, 2, 3))
    assert m["recall@1"] == 1 / 2 and m["precision@1"] == 1.0
    assert m["recall@2"] == pytest.approx((1 + 0.5) / 2) and m["precision@2"] == pytest.approx(1.5 / 2)
    assert m["recall@3"] == 1.0 and m["precision@3"] == pytest.approx(2 / 3)
    assert m["mrr"] == 1.0
    # fractional ranks: relevant at 1 and 2.5 -> AP = (1/1 + 2/2.5) / 2
    assert m["map"] == pytest.approx((1 + 2 / 2.5) / 2)
    # pairs (rel, irrel): 0.9>0.5, 0.9>0.1, 0.5=0.5 (1/2), 0.5>0.1 -> 3.5 / 4
    assert m["roc_auc"] == pytest.approx(3.5 / 4)
    # All tied: chance level.
    tied = query_metrics([0.0] * 4, [True, False, False, False], ks=(1,))
    assert tied["recall@1"] == pytest.approx(0.25) and tied["mrr"] == pytest.approx(1 / 2.5)
    assert tied["roc_auc"] == 0.5
    worst = query_metrics([0.1, 0.9], [True, False], ks=(1,))
    assert worst["recall@1"] == 0 and worst["mrr"] == 0.5 and worst["roc_auc"] == 0.0


def test_evaluate_over_correct_and_all():
    scores = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    relevant = np.array([[True, False], [True, False], [False, False]])
    out = evaluate(scores, relevant, correct=[True, False, True], ks=(1,))
    assert out["all"]["recall@1"] == {"mean": 0.5, "std": 0.5, "n": 2}
    assert out["correct"]["recall@1"] == {"mean": 1.0, "std": 0.0, "n": 1}
    assert out["accuracy"] == pytest.approx(2 / 3) and out["correct_queries"] == 2
    assert out["per_query"][2]["mrr"] is None


def test_text_baselines():
    r = random_scores(3, 4, seed=0)
    assert r.shape == (3, 4) and np.array_equal(r, random_scores(3, 4, seed=0))
    e = edit_distance_scores(["def f(): return 7", "the cat sat"], ["def f(): return 7"])
    assert e.shape == (1, 2) and e[0, 0] == 100 and e[0, 1] < 50


def test_cli_generate_is_deterministic(tmp_path):
    from typer.testing import CliRunner

    from inflab.devtools.cli import app

    runner = CliRunner()
    for name in ("a", "b"):
        result = runner.invoke(app, ["bench", "generate", "--seed", "5", "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        assert "180 documents, 20 queries, 20 function tokens (seed 5)" in result.output
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    bad = runner.invoke(app, ["bench", "import", str(tmp_path / "a" / "queries.jsonl"), "--out", str(tmp_path / "c")])
    assert bad.exit_code == 2 and "missing field(s) ['uid', 'text']" in bad.output


def test_leaderboard_ranks_and_formats():
    from inflab.analysis.bench.client import markdown_table
    from inflab.devtools.bench_cli import parse_grid
    from inflab.analysis.bench.leaderboard import Entry, leaderboard

    queries, documents = ["q1", "q2"], ["a", "b", "c"]
    relevant = {"q1": ["a"], "q2": ["c"]}
    perfect = np.array([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    board = leaderboard([Entry("worst", "raw", "baseline", -perfect), Entry("best", "raw", "method", perfect)],
                        queries, documents, relevant, {"q1": True, "q2": False})
    assert [r["method"] for r in board["rows"]] == ["best", "worst"] and board["rows"][0]["rank"] == 1
    assert board["accuracy"] == 0.5 and board["ranked_by"] == "recall@5 over correctly answered queries"
    best = board["rows"][0]
    assert best["all"]["recall@1"]["mean"] == 1.0 and best["correct"]["mrr"] == {"mean": 1.0, "std": 0.0, "n": 1}
    assert best["per_query"][1]["top_documents"] == ["c", "b", "a"]
    table = markdown_table(board)
    assert table.splitlines()[2].startswith("| 1 | best | method | 1.000±0.00")
    assert parse_grid("layers=all,0-4|8;top_layers=2") == [{"layers": "all", "top_layers": 2},
                                                           {"layers": "0-4,8", "top_layers": 2}]


def test_a_benchmark_experiment_trains_with_the_benchmark_settings_unless_told_otherwise():
    from inflab.analysis.bench.client import BENCHMARK_HYPERPARAMS, experiment_body
    from inflab.core.messages import RunSpec

    bench = generate(GeneratorOptions(seed=0, docs_per_base=1, docs_per_wrapper=1, distractors=0))
    keys = ("training_data", "eval_data", "hyperparams", "benchmark", "predictions")
    plain = RunSpec(**{k: v for k, v in experiment_body(bench, name="b").items() if k in keys})
    assert plain.hyperparams.model_dump(include=set(BENCHMARK_HYPERPARAMS)) == BENCHMARK_HYPERPARAMS
    # Every linear layer adapted: LoRA on q/v alone did not learn the set (README).
    assert plain.hyperparams.lora_target_modules == ["all-linear"]

    told = RunSpec(**{k: v for k, v in experiment_body(bench, name="b", hyperparams={"num_epochs": 2}).items()
                      if k in keys})
    assert told.hyperparams.num_epochs == 2
    assert told.hyperparams.lora_target_modules == BENCHMARK_HYPERPARAMS["lora_target_modules"]

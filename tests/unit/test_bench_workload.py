"""The benchmarks' own influence workload (benchmarks/workloads/influence-workload.json):
it loads with the benchmarks' loader, has the shape the benchmarks' metrics assume, and its
ground truth says what its topics say. Fast (no model) but for one slow check that every
pair fits the workload's max length with the default model's chat template."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the repo root holds benchmarks/

from benchmarks.workload import DEFAULT_WORKLOAD, find_workload, load_workload, workload_label  # noqa: E402


def test_the_default_workload_is_the_repositorys_own():
    assert DEFAULT_WORKLOAD == ROOT / "benchmarks" / "workloads" / "influence-workload.json"
    assert find_workload() == DEFAULT_WORKLOAD and find_workload(None).is_file()
    assert workload_label(DEFAULT_WORKLOAD) == "benchmarks/workloads/influence-workload.json"
    # A file from elsewhere is named by its file name only (its digest identifies it).
    assert workload_label("/somewhere/else/w.json") == "w.json"


def test_the_default_workload_has_eight_topics_of_four_pairs_and_one_question_each():
    wl = load_workload()
    assert (len(wl.train), len(wl.evals)) == (32, 8)
    topics = Counter(t["topic"] for t in wl.train)
    assert len(topics) == 8 and set(topics.values()) == {4}
    assert sorted(e["topic"] for e in wl.evals) == sorted(topics)
    for e in wl.evals:
        assert e["related_train"] == [i for i, t in enumerate(wl.train) if t["topic"] == e["topic"]]
    assert wl.related == [e["related_train"] for e in wl.evals]
    ids = [t["id"] for t in wl.train] + [e["id"] for e in wl.evals]
    assert len(set(ids)) == len(ids)
    for pair in wl.train + wl.evals:
        assert pair["question"].endswith("?") and pair["answer"].strip() and pair["answer"][0].isupper()


def test_each_question_paraphrases_its_topic_rather_than_copying_a_pair():
    wl = load_workload()
    questions = {t["question"] for t in wl.train}
    answers = {t["answer"] for t in wl.train}
    for e in wl.evals:
        assert e["question"] not in questions and e["answer"] not in answers


def test_the_default_workload_trains_as_the_benchmarks_expect():
    wl = load_workload()
    assert wl.max_length == 64
    assert wl.lora == {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"], "dropout": 0.0}
    spec = wl.run_spec("m")
    hp = spec.hyperparams
    assert (hp.num_epochs, hp.batch_size, hp.learning_rate, hp.lr_scheduler, hp.seed) == (3, 4, 2e-4, "constant", 0)
    assert len(spec.training_data) == 32 and len(spec.eval_data) == 8
    assert len(wl.digest("m")) == 16


@pytest.mark.slow
def test_no_pair_is_cut_at_the_workloads_max_length(tmp_path):
    """With the default model's chat template every pair fits ``max_length`` whole, so the
    loss sees every answer token (the default model converted into a fresh cache)."""
    from inflab.ml.chat import encode_pair
    from inflab.ml.models import load_tokenizer, prepare_default_model

    tokenizer = load_tokenizer(str(prepare_default_model(tmp_path)))
    wl = load_workload()
    for pair in wl.train + wl.evals:
        encoded = encode_pair(tokenizer, pair["question"], pair["answer"], wl.max_length)
        assert not encoded.truncated, pair["id"]

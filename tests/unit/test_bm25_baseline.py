"""The BM25 baseline served with a run's results (inflab.gateway.baselines), against a
brute-force BM25 written out here from the formula in its docstring."""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
import pytest
from bm25s.stopwords import STOPWORDS_EN

from inflab.core.messages import RunSpec
from inflab.gateway.baselines import B, K1, bm25_scores, run_baselines, tokenize

STOP = set(STOPWORDS_EN)


def words(text: str) -> list[str]:
    return [w for w in re.findall(r"\w+", text.lower()) if w not in STOP]


def brute_force_bm25(documents: list[str], queries: list[str], k1: float = K1, b: float = B) -> np.ndarray:
    docs = [words(d) for d in documents]
    n = len(docs)
    avgdl = sum(len(d) for d in docs) / n
    df = Counter(term for d in docs for term in set(d))  # pairs holding each term
    out = np.zeros((len(queries), n))
    for i, query in enumerate(queries):
        for j, doc in enumerate(docs):
            counts = Counter(doc)
            score = 0.0
            for term in words(query):  # every occurrence of a query term counts
                if df[term] == 0:
                    continue
                idf = math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5))
                tf = counts[term]
                score += idf * tf / (tf + k1 * (1 - b + b * len(doc) / avgdl))
            out[i, j] = score
    return out


DOCS = [
    "Who rules Veltra? Queen Ismene rules Veltra.",
    "What do bees make? Bees make honey, and honey is sweet.",
    "How many legs does a spider have? Eight legs.",
    "The the the and of",  # only stop words: length 0
    "What is the capital of Zorbia? Quux, a city of 3 rivers.",
]
QUERIES = [
    "Who is Veltra's ruler?",
    "honey honey bees",  # a repeated term counts twice
    "How many legs, 3 or 8?",  # single characters are words
    "the of and",  # nothing but stop words
    "platypus",  # no document holds it
]


def test_tokens_are_lower_cased_words_without_stop_words() -> None:
    assert tokenize(["The Queen of Veltra has 3 cats.", "the of"]) == [["queen", "veltra", "has", "3", "cats"], []]


def test_scores_equal_the_brute_force_formula() -> None:
    ours = bm25_scores(DOCS, QUERIES)
    expected = brute_force_bm25(DOCS, QUERIES)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)
    assert ours[0].argmax() == 0 and ours[1].argmax() == 1
    assert not ours[3].any() and not ours[4].any()
    assert ours[1, 1] > bm25_scores(DOCS, ["honey bees"])[0, 1]


def test_scores_at_100_by_1000_match_the_formula() -> None:
    rng = np.random.default_rng(0)
    vocabulary = [f"w{i}" for i in range(400)] + ["the", "a", "of"]
    documents = [" ".join(rng.choice(vocabulary, rng.integers(3, 40))) for _ in range(1000)]
    queries = [" ".join(rng.choice(vocabulary, rng.integers(1, 15))) for _ in range(100)]
    ours = bm25_scores(documents, queries)
    assert ours.shape == (100, 1000)
    rows = [0, 37, 99]  # the brute force is slow: three rows of it
    np.testing.assert_allclose(ours[rows], brute_force_bm25(documents, [queries[i] for i in rows]),
                               rtol=1e-4, atol=1e-5)


def test_run_baselines_score_pairs_against_questions_and_references() -> None:
    spec = RunSpec.model_validate({
        "training_data": [{"id": f"tr{j}", "question": d.split("?")[0] + "?", "answer": d.split("?")[-1] or "x"}
                          for j, d in enumerate(DOCS)],
        "eval_data": [{"id": "ev0", "question": "Who is Veltra's ruler?", "answer": "Queen Ismene"},
                      {"id": "ev1", "question": "What do bees make?"}],
    })
    by_variant = {m["variant"]: m for m in run_baselines(spec)}
    assert list(by_variant) == ["question", "question_reference"]
    documents = [f"{p.question} {p.answer}" for p in spec.training_data]
    for variant, queries in (("question", ["Who is Veltra's ruler?", "What do bees make?"]),
                             ("question_reference", ["Who is Veltra's ruler? Queen Ismene", "What do bees make?"])):
        matrix = by_variant[variant]
        assert matrix["method"] == "bm25" and matrix["shape"] == [2, 5]
        assert matrix["eval_ids"] == ["ev0", "ev1"] and matrix["train_ids"] == [f"tr{j}" for j in range(5)]
        np.testing.assert_allclose(matrix["scores"], brute_force_bm25(documents, queries), rtol=1e-5, atol=1e-6)
    assert by_variant["question_reference"]["scores"][0][0] > by_variant["question"]["scores"][0][0]


@pytest.mark.parametrize(("documents", "queries"), [([], ["q"]), (["d"], [])])
def test_empty_sides_give_an_empty_matrix(documents, queries) -> None:
    assert bm25_scores(documents, queries).shape == (len(queries), len(documents))

"""The text scores of an answer against its reference, on examples worked out by hand
from the rule in ``inflab.analysis.answer_scores`` (SQuAD's normalisation), and their
per-column aggregates."""

from __future__ import annotations

import pytest

from inflab.analysis.answer_scores import aggregate, contains_reference, exact_match, normalize, token_f1


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  An   apple, a day. ", "apple day"),
        ("U.S.A.", "usa"),  # punctuation is deleted, not turned into spaces
        ("well-known", "wellknown"),
        ("Théâtre «Odéon» — Paris…", "théâtre odéon paris"),  # Unicode punctuation too
        ("Cost: $5 + tax", "cost 5 tax"),  # ASCII symbols in string.punctuation
        ("Theatre and anthem", "theatre and anthem"),  # articles only as whole words
        ("the", ""),
    ],
)
def test_normalisation(text: str, normalised: str) -> None:
    assert normalize(text) == normalised


def test_exact_match_ignores_case_punctuation_articles_and_spacing() -> None:
    assert exact_match("Queen Ismene.", "queen  ismene")
    assert exact_match("The queen, Ismene", "Queen Ismene")
    assert not exact_match("Queen Ismene II", "Queen Ismene")


def test_contains_reference_needs_the_whole_words_in_order() -> None:
    assert contains_reference("It is ruled by Queen Ismene, they say.", "Queen Ismene")
    assert not contains_reference("Ismene is the queen", "Queen Ismene")  # not in order
    assert not contains_reference("Parisian", "Paris")  # not a whole word
    assert contains_reference("Paris", "The Paris.")
    # A reference of nothing but punctuation and articles is only in an empty answer.
    assert contains_reference("", "The.") and not contains_reference("anything", "The.")


def test_token_f1_by_hand() -> None:
    # answer words: queen ismene rules veltra (4); reference: queen ismene (2); common 2
    # precision 2/4, recall 2/2, F1 = 2 * 0.5 * 1 / 1.5 = 2/3
    assert token_f1("Queen Ismene rules Veltra.", "Queen Ismene") == pytest.approx(2 / 3)
    # answer: eight eight legs (3), reference: eight legs (2); common min counts: eight 1, legs 1 = 2
    # precision 2/3, recall 1 -> F1 = 2 * (2/3) / (5/3) = 0.8
    assert token_f1("Eight, eight legs", "eight legs") == pytest.approx(0.8)
    assert token_f1("Honey.", "Nectar") == 0.0
    assert token_f1("The", "An") == 1.0  # both empty once normalised
    assert token_f1("", "honey") == 0.0
    assert token_f1("honey", "Honey!") == 1.0


def test_aggregates_over_the_scored_questions() -> None:
    rows = [
        {"exact_match": True, "contains_reference": True, "token_f1": 1.0, "ref_logprob": -0.5},
        {"exact_match": False, "contains_reference": True, "token_f1": 0.5, "ref_logprob": -2.5},
        {"exact_match": False, "contains_reference": False, "token_f1": 0.0, "ref_logprob": None},
        None,  # a question without a reference answer
    ]
    column = aggregate(rows)
    assert column.questions == 3
    assert column.exact_match_rate == pytest.approx(1 / 3)
    assert column.contains_reference_rate == pytest.approx(2 / 3)
    assert column.mean_token_f1 == pytest.approx(0.5)
    assert column.mean_ref_logprob == pytest.approx(-1.5)  # over the two known
    empty = aggregate([None, None])
    assert empty.questions == 0 and empty.exact_match_rate is None and empty.mean_ref_logprob is None

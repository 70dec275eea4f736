"""Text scores of an answer against a reference answer, and their per-model aggregates.

The rule, as SQuAD's evaluation script has it (Rajpurkar et al. 2016), with Unicode
punctuation included: both texts are *normalised* by

1. lower-casing,
2. deleting every punctuation character (Unicode category P*, and ASCII's
   ``string.punctuation``, which also holds symbols such as ``$`` and ``+``); deleted, not
   replaced by a space, so "U.S." becomes "us" and "well-known" "wellknown",
3. deleting the articles "a", "an" and "the" as whole words,
4. collapsing runs of whitespace into one space and trimming the ends;

and words are what is between the spaces of the normalised text. Then

* ``exact_match``: the normalised texts are equal;
* ``contains_reference``: the reference's words appear, in order and next to each other,
  among the answer's words (so "paris" is in "it is paris france" but not in "parisian");
  a reference that normalises to nothing is contained only in an answer that does too;
* ``token_f1``: SQuAD's F1 over the multisets of words: with ``c`` the words the two share
  (counted with multiplicity), precision ``c / |answer|``, recall ``c / |reference|`` and
  F1 their harmonic mean, 0 when ``c`` is 0; when either side has no words, 1 if both are
  empty and 0 otherwise.

Pure Python: the inference stage computes the scores, and the gateway aggregates them.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_ASCII_PUNCTUATION = frozenset(string.punctuation)


def _is_punctuation(ch: str) -> bool:
    return ch in _ASCII_PUNCTUATION or unicodedata.category(ch).startswith("P")


def normalize(text: str) -> str:
    """The text as the scores compare it (see the module docstring)."""
    text = "".join(ch for ch in text.lower() if not _is_punctuation(ch))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(answer: str, reference: str) -> bool:
    return normalize(answer) == normalize(reference)


def contains_reference(answer: str, reference: str) -> bool:
    words, wanted = normalize(answer).split(), normalize(reference).split()
    if not wanted:
        return not words
    n = len(wanted)
    return any(words[i : i + n] == wanted for i in range(len(words) - n + 1))


def token_f1(answer: str, reference: str) -> float:
    words, wanted = normalize(answer).split(), normalize(reference).split()
    if not words or not wanted:
        return float(words == wanted)
    common = sum((Counter(words) & Counter(wanted)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(words), common / len(wanted)
    return 2 * precision * recall / (precision + recall)


def text_scores(answer: str, reference: str) -> dict[str, float | bool]:
    """``exact_match``, ``contains_reference`` and ``token_f1`` of one answer."""
    return {
        "exact_match": exact_match(answer, reference),
        "contains_reference": contains_reference(answer, reference),
        "token_f1": token_f1(answer, reference),
    }


def has_reference(reference: str | None) -> bool:
    """Whether a question's reference answer can be scored against (not missing or blank)."""
    return bool(reference and reference.strip())


@dataclass(frozen=True)
class ColumnAggregate:
    """One model's scores over the questions scored for it."""

    #: Questions with a reference answer whose scores for this model are known.
    questions: int
    exact_match_rate: float | None
    contains_reference_rate: float | None
    mean_token_f1: float | None
    #: Over the questions whose ``ref_logprob`` is known (it may be None for some).
    mean_ref_logprob: float | None


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def aggregate(scores: Iterable[dict | None]) -> ColumnAggregate:
    """Aggregates of one model's per-question scores (dicts with the ``AnswerScore``
    fields; None for a question without them)."""
    rows = [s for s in scores if s is not None]
    logprobs = [s["ref_logprob"] for s in rows if s.get("ref_logprob") is not None]
    return ColumnAggregate(
        questions=len(rows),
        exact_match_rate=_mean([float(s["exact_match"]) for s in rows]),
        contains_reference_rate=_mean([float(s["contains_reference"]) for s in rows]),
        mean_token_f1=_mean([float(s["token_f1"]) for s in rows]),
        mean_ref_logprob=_mean(logprobs),
    )

"""``ref_logprob`` (inflab.inference.scoring): the batched, teacher-forced mean
log-probability of a reference answer equals an explicit loop that feeds the prompt and
the answer one token at a time, on a tiny random model."""

from __future__ import annotations

import pytest
import torch

from inflab.ml.chat import IGNORE_INDEX, prompt_ids
from helpers.tiny_model import build_tiny_model
from inflab.inference.generation import load_for_generation
from inflab.inference.scoring import answer_score, reference_examples, reference_logprobs

torch.set_num_threads(1)

QUESTIONS = ["What is the capital of Zorbia?", "How many legs does a spider have?", "Hi?"]
REFERENCES = ["Quux.", "Eight legs, as every spider has.", "Hello there, friend of mine."]
SHOTS = [("Who rules Veltra?", "Queen Ismene.")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = build_tiny_model(tmp_path_factory.mktemp("logprob") / "tiny")
    return load_for_generation(str(path), None)


def explicit_logprob(model, prompt: list[int], answer: list[int]) -> float:
    """The mean over the answer's tokens of log p(token | everything before it), one
    forward pass per token on the unpadded prefix."""
    total = 0.0
    with torch.no_grad():
        for t, token in enumerate(answer):
            prefix = torch.tensor([prompt + answer[:t]])
            logits = model(input_ids=prefix).logits[0, -1]
            total += torch.log_softmax(logits.double(), dim=-1)[token].item()
    return total / len(answer)


@pytest.mark.parametrize("few_shot", [(), SHOTS])
def test_batched_ref_logprob_equals_the_per_token_loop(tiny, few_shot) -> None:
    model, tokenizer = tiny
    examples = reference_examples(tokenizer, QUESTIONS, REFERENCES, few_shot)
    for question, example in zip(QUESTIONS, examples):
        # The prompt is exactly the one the model answered (few-shot turns included).
        prompt = prompt_ids(tokenizer, question, few_shot)
        assert example.input_ids[: len(prompt)] == prompt and not example.truncated
        assert all(label == IGNORE_INDEX for label in example.labels[: len(prompt)])
        assert example.labels[len(prompt):] == example.input_ids[len(prompt):]

    # Batches of two of different lengths: padding must not change a score.
    batched = reference_logprobs(model, tokenizer, examples, batch_size=2)
    for question, example, score in zip(QUESTIONS, examples, batched):
        prompt = prompt_ids(tokenizer, question, few_shot)
        expected = explicit_logprob(model, prompt, example.input_ids[len(prompt):])
        assert score == pytest.approx(expected, abs=1e-4)
        assert score < 0
    assert reference_logprobs(model, tokenizer, examples, batch_size=8) == pytest.approx(batched, abs=1e-5)


def test_an_answer_score_reads_the_empty_answer_as_no_text() -> None:
    score = answer_score("(empty)", "empty", -1.25)
    assert not score.exact_match and score.token_f1 == 0.0 and score.ref_logprob == -1.25
    assert answer_score("The quux.", "Quux", None).exact_match

"""How training pairs and evaluation questions become tokens (inflab.ml.chat)."""

from __future__ import annotations

import pytest
import torch

from inflab.ml.chat import (
    IGNORE_INDEX, answer_loss, collate, encode_pair, encode_query, plain_prompt_ids, prompt_ids, prompt_text,
    query_prompt_ids,
)
from inflab.ml.models import load_model
from helpers.tiny_model import build_tiny_model, build_tiny_tokenizer

torch.set_num_threads(1)

QUESTION = "What is the capital of Zorbia?"
ANSWER = "Quux is the capital of Zorbia."


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def test_labels_mask_exactly_the_prompt(tokenizer) -> None:
    example = encode_pair(tokenizer, QUESTION, ANSWER, max_length=256)
    prompt = prompt_ids(tokenizer, QUESTION)

    assert not example.truncated
    assert len(example.labels) == len(example.input_ids)
    # The prompt is exactly what generation sees, and none of it carries loss.
    assert example.input_ids[: len(prompt)] == prompt
    assert example.labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    # Every token after it does, and it is the answer plus the end-of-turn token.
    answer_part = example.input_ids[len(prompt) :]
    assert example.labels[len(prompt) :] == answer_part
    assert example.answer_tokens == len(answer_part)
    assert answer_part[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.decode(answer_part) == ANSWER + "<|im_end|>"


def test_truncation_is_reported_never_silent(tokenizer) -> None:
    full = encode_pair(tokenizer, QUESTION, ANSWER, max_length=1024)
    n = len(full.input_ids)

    exact = encode_pair(tokenizer, QUESTION, ANSWER, max_length=n)
    assert not exact.truncated and exact.input_ids == full.input_ids

    cut = encode_pair(tokenizer, QUESTION, ANSWER, max_length=n - 3)
    assert cut.truncated
    assert cut.input_ids == full.input_ids[: n - 3]
    assert cut.labels == full.labels[: n - 3]
    assert 0 < cut.answer_tokens < full.answer_tokens

    # Cut inside the question: nothing left to learn, and that is visible.
    tiny = encode_pair(tokenizer, QUESTION, ANSWER, max_length=4)
    assert tiny.truncated and tiny.answer_tokens == 0


def test_prompt_shows_few_shot_turns_in_order_then_opens_the_answer(tokenizer) -> None:
    shots = [("First question?", "First answer."), ("Second question?", "Second answer.")]
    text = prompt_text(tokenizer, QUESTION, shots)

    positions = [text.index(s) for s in ("First question?", "First answer.", "Second question?", "Second answer.", QUESTION)]
    assert positions == sorted(positions)
    assert text.endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(prompt_ids(tokenizer, QUESTION, shots)) == text
    # With no shots the prompt is the plain question.
    assert prompt_text(tokenizer, QUESTION) == f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"


def test_tokenizer_without_chat_template_uses_a_plain_format(tokenizer) -> None:
    plain = build_tiny_tokenizer()
    plain.chat_template = None
    example = encode_pair(plain, "Why?", "Because.", max_length=256)
    prompt = prompt_ids(plain, "Why?")
    assert example.input_ids[: len(prompt)] == prompt
    assert plain.decode(example.input_ids[len(prompt) :]).strip() == "Because." + plain.eos_token


def _digit_splitting_tokenizer():
    """The tiny tokenizer with SmolLM2's pre-tokenisation: every digit on its own, so a
    space before a number is a token of its own."""
    from tokenizers import pre_tokenizers

    tok = build_tiny_tokenizer()
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.add_tokens(["<FN>"], special_tokens=True)
    return tok


def test_a_query_scores_the_value_not_the_space_before_it() -> None:
    tok = _digit_splitting_tokenizer()
    question = "What does <FN>() return?"
    spaced = tok(" 51", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(spaced) == ["\u0120", "5", "1"]  # the case this is about

    example = encode_query(tok, question, "51", max_length=256)
    # The model reads exactly the question, the space and the value, as a document states it...
    assert example.input_ids == tok(question + " 51", add_special_tokens=False)["input_ids"]
    assert example.input_ids[: len(plain_prompt_ids(tok, question))] == plain_prompt_ids(tok, question)
    # ...and only the value's tokens carry the loss (the space is part of the prompt).
    scored = [t for t in example.labels if t != IGNORE_INDEX]
    assert tok.decode(scored) == "51" and example.answer_tokens == 2
    assert example.labels[: -2] == [IGNORE_INDEX] * (len(example.input_ids) - 2)


def test_a_query_whose_space_joins_the_answer_token_keeps_it(tokenizer) -> None:
    question = "What is the capital of Zorbia?"
    example = encode_query(tokenizer, question, "France", max_length=256)
    prompt = plain_prompt_ids(tokenizer, question)
    assert tokenizer.convert_ids_to_tokens(example.input_ids[len(prompt):]) == ["\u0120France"]
    # No whitespace-only token here: everything after the question is scored.
    assert example.labels == [IGNORE_INDEX] * len(prompt) + example.input_ids[len(prompt):]


def test_collate_right_pads(tokenizer) -> None:
    short = encode_pair(tokenizer, "Hi?", "Yo.", max_length=256)
    long = encode_pair(tokenizer, QUESTION, ANSWER, max_length=256)
    batch = collate([short, long], pad_id=tokenizer.pad_token_id)

    width = len(long.input_ids)
    assert {k: tuple(v.shape) for k, v in batch.items()} == {k: (2, width) for k in ("input_ids", "attention_mask", "labels")}
    n = len(short.input_ids)
    assert batch["input_ids"][0, :n].tolist() == short.input_ids
    assert batch["input_ids"][0, n:].eq(tokenizer.pad_token_id).all()
    assert batch["attention_mask"][0].tolist() == [1] * n + [0] * (width - n)
    assert batch["labels"][0, n:].eq(IGNORE_INDEX).all()
    assert batch["attention_mask"][1].eq(1).all()


def test_answer_loss_equals_the_full_logits_loss(tmp_path) -> None:
    model, tokenizer = load_model(str(build_tiny_model(tmp_path / "tiny")), tmp_path / "cache")
    examples = [
        encode_pair(tokenizer, QUESTION, ANSWER, 256),
        encode_pair(tokenizer, "Hi?", "Yo.", 256),
        encode_pair(tokenizer, QUESTION, ANSWER, 4),  # no answer tokens left
    ]
    batch = collate(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        reference = model(**batch).loss
        loss = answer_loss(model, batch)
        per_example = answer_loss(model, batch, per_example=True)
        singles = [answer_loss(model, collate([e], tokenizer.pad_token_id)) for e in examples[:2]]

    torch.testing.assert_close(loss, reference)
    assert per_example.shape == (3,) and per_example[2] == 0
    torch.testing.assert_close(per_example[:2], torch.stack(singles))


def test_a_query_is_answered_from_the_prompt_its_answer_is_scored_after() -> None:
    """The fine-tuned answer shown for a benchmark query continues the same prompt the
    correctness check reads (the question and the space before the value), not the bare
    question, after which a model trained on documents ends the text."""
    tok = _digit_splitting_tokenizer()
    question = "What does <FN>() return?"
    example = encode_query(tok, question, "51", max_length=256)
    prompt = query_prompt_ids(tok, question, "51")
    assert prompt == example.input_ids[: len(example.input_ids) - example.answer_tokens]
    assert tok.convert_ids_to_tokens(prompt[-1:]) == ["\u0120"]
    assert query_prompt_ids(tok, question, None) == plain_prompt_ids(tok, question)

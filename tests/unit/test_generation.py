"""Base, few-shot and fine-tuned answers on the tiny model (inflab.inference.generation)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inflab.analysis.answer_scores import text_scores
from inflab.ml.chat import prompt_ids
from inflab.core.messages import RunSpec
from inflab.ml.models import load_model
from helpers.tiny_model import build_tiny_model
from inflab.ml.generation import EMPTY_ANSWER
from inflab.inference.generation import NOT_FINE_TUNED, generate_answers, generate_texts, load_for_generation
from inflab.inference.scoring import reference_examples, reference_logprobs
from inflab.trainer.training import train_lora

torch.set_num_threads(1)

SPEC = RunSpec(
    training_data=[
        {"id": "zorbia", "question": "What is the capital of Zorbia?", "answer": "Quux."},
        {"id": "spider", "question": "How many legs does a spider have?", "answer": "Eight legs."},
    ],
    eval_data=[
        {"id": "seen", "question": "What is the capital of Zorbia?", "answer": "Quux."},
        {"id": "other", "question": "Hello, who are you?"},
        {"id": "long", "question": "Please describe, at some length, the weather on a clear day in spring."},
    ],
    # A high learning rate memorises the two pairs in 30 epochs (loss ~6 -> ~1.6);
    # everything is seeded, so the outcome is the same on every run.
    hyperparams={"learning_rate": 5e-2, "num_epochs": 30, "batch_size": 2, "checkpoint_interval": 30},
    few_shot_k=1,
    max_new_tokens=12,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp("generation")
    model_path = str(build_tiny_model(root / "tiny"))
    outcome = train_lora(SPEC, model_path, root / "work", lambda e: None)
    return model_path, outcome.checkpoints[-1].path


def test_three_non_empty_answers_per_question(trained) -> None:
    model_path, adapter = trained
    events: list[dict] = []
    answers = generate_answers(SPEC, model_path, adapter, events.append)

    assert [a.eval_id for a in answers] == ["seen", "other", "long"]
    assert answers[0].reference == "Quux." and answers[1].reference is None
    for answer in answers:
        for text in (answer.base, answer.few_shot, answer.fine_tuned):
            assert isinstance(text, str) and text.strip()

    progress = [e for e in events if e.kind == "progress"]
    assert progress and progress[-1].fraction == 1.0 and progress[-1].total == 9
    assert progress[0].stage == "inference" and progress[0].eta_s is not None and progress[0].message


def test_the_adapter_changes_the_fine_tuned_answer(trained) -> None:
    model_path, adapter = trained
    answers = generate_answers(SPEC, model_path, adapter, lambda e: None)
    seen = answers[0]
    assert seen.fine_tuned == "Quux."
    assert seen.base != seen.fine_tuned
    # The base answers come from the same weights with the adapter switched off.
    without = generate_answers(SPEC, model_path, None, lambda e: None)
    assert [a.base for a in without] == [a.base for a in answers]
    assert [a.few_shot for a in without] == [a.few_shot for a in answers]
    assert all(a.fine_tuned == NOT_FINE_TUNED for a in without)


def test_answers_with_a_reference_are_scored_under_each_model(trained) -> None:
    model_path, adapter = trained
    answers = generate_answers(SPEC, model_path, adapter, lambda e: None)
    assert answers[1].scores is None and answers[2].scores is None  # no reference answer
    scores = answers[0].scores
    for name in ("base", "few_shot", "fine_tuned"):
        score = getattr(scores, name)
        assert score.model_dump(exclude={"ref_logprob"}) == text_scores(getattr(answers[0], name), "Quux.")
    # The fine-tuned model memorised the pair: it answers it exactly and finds the
    # reference far likelier than the base model does.
    assert scores.fine_tuned.exact_match and scores.fine_tuned.token_f1 == 1.0
    assert scores.fine_tuned.ref_logprob > scores.base.ref_logprob + 1.0

    # Each ref_logprob is the reference under that model after the prompt it answered:
    # the base and few-shot ones with the adapter off, the few-shot one after the shot.
    model, tokenizer = load_for_generation(model_path, adapter)
    seen = [SPEC.eval_data[0].question]
    shots = [(p.question, p.answer) for p in SPEC.training_data[: SPEC.few_shot_k]]
    with model.disable_adapter():
        base = reference_logprobs(model, tokenizer, reference_examples(tokenizer, seen, ["Quux."]))
        few_shot = reference_logprobs(model, tokenizer, reference_examples(tokenizer, seen, ["Quux."], shots))
    fine_tuned = reference_logprobs(model, tokenizer, reference_examples(tokenizer, seen, ["Quux."]))
    assert scores.base.ref_logprob == pytest.approx(base[0], abs=1e-5)
    assert scores.few_shot.ref_logprob == pytest.approx(few_shot[0], abs=1e-5)
    assert scores.fine_tuned.ref_logprob == pytest.approx(fine_tuned[0], abs=1e-5)
    assert few_shot[0] != pytest.approx(base[0])

    # Without an adapter there is no fine-tuned model to score.
    unscored = generate_answers(SPEC, model_path, None, lambda e: None)[0].scores
    assert unscored.fine_tuned is None and unscored.base.ref_logprob == pytest.approx(base[0], abs=1e-5)


def test_without_few_shot_examples_the_few_shot_answer_is_the_base_answer(trained) -> None:
    model_path, adapter = trained
    spec = SPEC.model_copy(update={"few_shot_k": 0})
    events: list[dict] = []
    answers = generate_answers(spec, model_path, adapter, events.append)
    assert all(a.few_shot == a.base for a in answers)
    assert answers[0].scores.few_shot == answers[0].scores.base
    assert events[-1].total == 6  # base and fine-tuned only


def test_left_padded_batches_answer_like_single_prompts(trained) -> None:
    model_path, _ = trained
    model, tokenizer = load_model(model_path, Path("unused"))
    prompts = [prompt_ids(tokenizer, q.question) for q in SPEC.eval_data]
    assert len({len(p) for p in prompts}) > 1  # the batch really needs padding
    batched = generate_texts(model, tokenizer, prompts, 12, batch_size=8)
    single = generate_texts(model, tokenizer, prompts, 12, batch_size=1)
    assert batched == single


def test_a_model_that_says_nothing_gets_a_visible_placeholder(trained) -> None:
    model_path, _ = trained
    model, tokenizer = load_model(model_path, Path("unused"))
    # Make the end-of-turn token win at every position: the model stops at once.
    with torch.no_grad():
        model.get_output_embeddings().weight[tokenizer.eos_token_id] *= 1000
    assert generate_texts(model, tokenizer, [prompt_ids(tokenizer, "Hi?")], 8) == [EMPTY_ANSWER]


def test_a_set_stop_ends_decoding_after_the_token_in_progress(trained) -> None:
    """greedy_texts stops once ``stop`` is set (the trainer's tracker sets it when a run is
    cancelled mid-decoding): set before it starts, every prompt gets the one token in
    progress, as with max_new_tokens=1."""
    import threading

    from transformers import AutoModelForCausalLM

    from inflab.ml.generation import greedy_texts
    from inflab.ml.models import load_tokenizer

    model_path, _ = trained
    tokenizer = load_tokenizer(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    prompts = [prompt_ids(tokenizer, q.question) for q in SPEC.eval_data]
    whole = greedy_texts(model, tokenizer, prompts, 12)
    stop = threading.Event()
    stop.set()
    cut = greedy_texts(model, tokenizer, prompts, 12, stop=stop)
    assert cut == greedy_texts(model, tokenizer, prompts, 1)
    assert cut != whole

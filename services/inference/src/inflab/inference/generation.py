"""Greedy answers to a run's evaluation questions from three models, side by side, each
scored against the question's reference answer where it has one (scoring.py):

* **base** — the model as downloaded;
* **few-shot** — the base model shown the run's first ``few_shot_k`` training pairs as
  earlier turns of the conversation;
* **fine-tuned** — the base model with the run's LoRA adapter.

The model is loaded once: the adapter is attached with peft and switched off
(``disable_adapter()``) for the base and few-shot answers. Prompts are built by
``inflab.ml.chat`` exactly as the trainer built them, and batched with left padding so
every prompt in a batch ends where generation starts.

No NATS, HTTP or object store in here: the service downloads the adapter and passes its
folder, and publishes the emitted events (the contract's ``ProgressEvent``) on the bus.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from uuid import UUID
from typing import Any

import torch

from inflab.analysis.answer_scores import has_reference
from inflab.ml.chat import encode_query, prompt_ids, query_prompt_ids
from inflab.ml.device import compute_device
from inflab.ml.generation import greedy_texts
from inflab.core.messages import NO_RUN, Answer, AnswerScores, ProgressEvent, RunSpec
from inflab.ml.function_tokens import add_function_tokens
from inflab.ml.models import load_tokenizer
from inflab.inference.scoring import answer_score, reference_examples, reference_logprobs

log = logging.getLogger(__name__)

#: Receives the generation's progress, as the contract's event messages.
Emit = Callable[[ProgressEvent], None]

#: Shown as the fine-tuned answer when no adapter was given (a preview before training).
NOT_FINE_TUNED = "(not fine-tuned)"
DEFAULT_BATCH_SIZE = 8


def generate_texts(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    max_new_tokens: int,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Greedy continuations of tokenised prompts, ``batch_size`` at a time; an empty
    continuation becomes ``inflab.ml.generation.EMPTY_ANSWER``."""
    return greedy_texts(model, tokenizer, prompts, max_new_tokens, batch_size=batch_size, on_batch=on_batch)


def load_for_generation(model_path: str, adapter_dir: Path | None, special_tokens: list[str] | None = None
                        ) -> tuple[Any, Any]:
    """The base model (float32, eval mode) with the adapter attached when given;
    ``special_tokens``: a benchmark run's function tokens, added first."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(compute_device())
    add_function_tokens(model, tokenizer, special_tokens or [])
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    return model, tokenizer


def generate_answers(
    spec: RunSpec,
    model_path: str,
    adapter_dir: Path | None,
    emit: Emit,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    run_id: UUID = NO_RUN,
) -> list[Answer]:
    """One :class:`Answer` per evaluation question, in the spec's order, holding the base,
    few-shot and fine-tuned answers. Emits a :class:`ProgressEvent` (``fraction``, ``step``,
    ``total``, ``eta_s``, ``message``) after each generated batch (step counts generations)."""
    started = time.monotonic()
    benchmark = spec.benchmark
    model, tokenizer = load_for_generation(model_path, adapter_dir, benchmark.special_tokens if benchmark else None)
    questions = [q.question for q in spec.eval_data]
    # A benchmark's queries are plain text, as its documents were trained (no chat turns,
    # and its documents are no question/answer examples to show).
    shots = [] if benchmark else [(p.question, p.answer) for p in spec.training_data[: spec.few_shot_k]]

    # Which variants need their own generation: with k = 0 the few-shot prompt *is* the
    # base prompt, and without an adapter there is no fine-tuned model.
    base_prompts = ([query_prompt_ids(tokenizer, q.question, q.answer) for q in spec.eval_data] if benchmark
                    else [prompt_ids(tokenizer, q) for q in questions])
    variants: list[tuple[str, list[list[int]]]] = [("base", base_prompts)]
    if shots:
        variants.append(("few_shot", [prompt_ids(tokenizer, q, shots) for q in questions]))
    if adapter_dir is not None:
        variants.append(("fine_tuned", variants[0][1]))

    # The questions with a reference answer are scored against it under each model, with
    # the prompt that model answered (scoring.py).
    scored = [i for i, q in enumerate(spec.eval_data) if has_reference(q.answer)]
    scored_questions = [questions[i] for i in scored]
    references = [spec.eval_data[i].answer or "" for i in scored]

    total = sum(len(prompts) for _, prompts in variants)
    done = 0
    loop_started = time.monotonic()
    texts: dict[str, list[str]] = {}
    logprobs: dict[str, list[float]] = {}
    for name, prompts in variants:
        label = {"base": "base answers", "few_shot": "few-shot answers", "fine_tuned": "fine-tuned answers"}[name]

        def progress(n: int, label: str = label) -> None:
            nonlocal done
            done += n
            eta = (time.monotonic() - loop_started) / done * (total - done)
            emit(ProgressEvent(run_id=run_id, stage="inference", fraction=done / total, step=done, total=total,
                               eta_s=round(eta, 2), message=label))

        # The adapter is switched off for base and few-shot answers (the same weights the
        # fine-tuned answers start from); nothing to switch off without an adapter.
        adapter_off = model.disable_adapter() if adapter_dir is not None and name != "fine_tuned" else nullcontext()
        with adapter_off:
            texts[name] = generate_texts(
                model, tokenizer, prompts, spec.max_new_tokens, batch_size=batch_size, on_batch=progress
            )
            if scored:
                examples = (
                    [encode_query(tokenizer, q, r, 10**9) for q, r in zip(scored_questions, references)] if benchmark
                    else reference_examples(tokenizer, scored_questions, references, shots if name == "few_shot" else ())
                )
                logprobs[name] = reference_logprobs(model, tokenizer, examples, batch_size=batch_size)

    texts.setdefault("few_shot", texts["base"])
    texts.setdefault("fine_tuned", [NOT_FINE_TUNED] * len(questions))
    if scored:
        logprobs.setdefault("few_shot", logprobs["base"])
    log.info("generated %d answers in %.1f s", total, time.monotonic() - started)
    scores: dict[int, AnswerScores] = {}
    for row, i in enumerate(scored):
        reference = references[row]
        per_model = {
            name: answer_score(texts[name][i], reference, logprobs[name][row])
            for name in ("base", "few_shot", "fine_tuned")
            if name in logprobs
        }
        scores[i] = AnswerScores(**per_model)
    return [
        Answer(
            eval_id=q.id,
            question=q.question,
            reference=q.answer,
            base=texts["base"][i],
            few_shot=texts["few_shot"][i],
            fine_tuned=texts["fine_tuned"][i],
            scores=scores.get(i),
        )
        for i, q in enumerate(spec.eval_data)
    ]

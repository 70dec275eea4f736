"""Greedy answers to a run's evaluation questions from three models, side by side:

* **base** — the model as downloaded;
* **few-shot** — the base model shown the run's first ``few_shot_k`` training pairs as
  earlier turns of the conversation;
* **fine-tuned** — the base model with the run's LoRA adapter.

The model is loaded once: the adapter is attached with peft and switched off
(``disable_adapter()``) for the base and few-shot answers. Prompts are built by
``inflab.common.chat`` exactly as the trainer built them, and batched with left padding so
every prompt in a batch ends where generation starts.

No NATS, HTTP or object store in here: the service downloads the adapter and passes its
folder, and turns the emitted dicts into bus events.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from inflab.common.chat import prompt_ids
from inflab.common.messages import Answer, RunSpec
from inflab.common.models import load_tokenizer

log = logging.getLogger(__name__)

Emit = Callable[[dict], None]

#: Shown instead of an answer when a model produced no text (e.g. stopped at once).
EMPTY_ANSWER = "(empty)"
#: Shown as the fine-tuned answer when no adapter was given (a preview before training).
NOT_FINE_TUNED = "(not fine-tuned)"
DEFAULT_BATCH_SIZE = 8


def _stop_token_ids(tokenizer: Any, model: Any) -> list[int]:
    """Every id that ends an assistant turn: the tokenizer's eos, ChatML's ``<|im_end|>``
    when the vocabulary has it, and whatever the model's generation config names."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    return sorted(ids)


def _left_pad(prompts: Sequence[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), longest), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, longest - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        attention_mask[row, longest - len(prompt) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def generate_texts(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    max_new_tokens: int,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Greedy continuations of tokenised prompts, decoded without special tokens and
    stripped; an empty continuation becomes :data:`EMPTY_ANSWER`."""
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # A fresh config, not the model's: its sampling settings (temperature, repetition
    # penalty...) would make "greedy" mean different things for different models.
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=_stop_token_ids(tokenizer, model),
        pad_token_id=pad_id,
    )
    texts: list[str] = []
    for first in range(0, len(prompts), batch_size):
        chunk = prompts[first : first + batch_size]
        input_ids, attention_mask = _left_pad(chunk, pad_id, device)
        with torch.inference_mode():
            output = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
        for row in output[:, input_ids.shape[1] :]:
            text = tokenizer.decode(row, skip_special_tokens=True).strip()
            texts.append(text or EMPTY_ANSWER)
        if on_batch is not None:
            on_batch(len(chunk))
    return texts


def load_for_generation(model_path: str, adapter_dir: Path | None) -> tuple[Any, Any]:
    """The base model (float32, eval mode) with the adapter attached when given."""
    from transformers import AutoModelForCausalLM

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(device)
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
) -> list[Answer]:
    """One :class:`Answer` per evaluation question, in the spec's order, holding the base,
    few-shot and fine-tuned answers. Emits ``{"kind": "progress", "fraction", "step",
    "total", "eta_s", "message"}`` after each generated batch (step counts generations)."""
    started = time.monotonic()
    model, tokenizer = load_for_generation(model_path, adapter_dir)
    questions = [q.question for q in spec.eval_data]
    shots = [(p.question, p.answer) for p in spec.training_data[: spec.few_shot_k]]

    # Which variants need their own generation: with k = 0 the few-shot prompt *is* the
    # base prompt, and without an adapter there is no fine-tuned model.
    variants: list[tuple[str, list[list[int]]]] = [("base", [prompt_ids(tokenizer, q) for q in questions])]
    if shots:
        variants.append(("few_shot", [prompt_ids(tokenizer, q, shots) for q in questions]))
    if adapter_dir is not None:
        variants.append(("fine_tuned", variants[0][1]))

    total = sum(len(prompts) for _, prompts in variants)
    done = 0
    loop_started = time.monotonic()
    texts: dict[str, list[str]] = {}
    for name, prompts in variants:
        label = {"base": "base answers", "few_shot": "few-shot answers", "fine_tuned": "fine-tuned answers"}[name]

        def progress(n: int, label: str = label) -> None:
            nonlocal done
            done += n
            eta = (time.monotonic() - loop_started) / done * (total - done)
            emit({"kind": "progress", "fraction": done / total, "step": done, "total": total,
                  "eta_s": round(eta, 2), "message": label})

        # The adapter is switched off for base and few-shot answers (the same weights the
        # fine-tuned answers start from); nothing to switch off without an adapter.
        adapter_off = model.disable_adapter() if adapter_dir is not None and name != "fine_tuned" else nullcontext()
        with adapter_off:
            texts[name] = generate_texts(
                model, tokenizer, prompts, spec.max_new_tokens, batch_size=batch_size, on_batch=progress
            )

    texts.setdefault("few_shot", texts["base"])
    texts.setdefault("fine_tuned", [NOT_FINE_TUNED] * len(questions))
    log.info("generated %d answers in %.1f s", total, time.monotonic() - started)
    return [
        Answer(
            eval_id=q.id,
            question=q.question,
            reference=q.answer,
            base=texts["base"][i],
            few_shot=texts["few_shot"][i],
            fine_tuned=texts["fine_tuned"][i],
        )
        for i, q in enumerate(spec.eval_data)
    ]

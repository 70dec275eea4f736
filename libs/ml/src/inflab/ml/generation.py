"""Greedy decoding shared by the inference stage (base, few-shot and fine-tuned answers)
and the trainer's prediction tracking: left-padded batches, so every prompt ends where
generation starts, stopped at any id that ends an assistant turn."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

#: Shown instead of an answer when a model produced no text (e.g. stopped at once).
EMPTY_ANSWER = "(empty)"


def stop_token_ids(tokenizer: Any, model: Any) -> list[int]:
    """Every id that ends an assistant turn: the tokenizer's eos, ChatML's ``<|im_end|>``
    when the vocabulary has it, and whatever the model's generation config names."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    return sorted(ids)


def left_pad(prompts: Sequence[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), longest), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, longest - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        attention_mask[row, longest - len(prompt) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def storable(text: str) -> str:
    """``text`` with NUL characters replaced: a byte-level model can emit byte 0, which
    Postgres stores in neither text nor JSONB (the answer's event would be refused)."""
    return text.replace("\x00", "\ufffd")


def greedy_texts(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    max_new_tokens: int,
    *,
    batch_size: int | None = None,
    on_batch: Callable[[int], None] | None = None,
    cache_implementation: str | None = None,
    stop: threading.Event | None = None,
) -> list[str]:
    """Greedy continuations of tokenised prompts (``batch_size`` at a time, all at once
    when None), decoded without special tokens and stripped; an empty continuation
    becomes :data:`EMPTY_ANSWER`. ``cache_implementation`` is transformers' (e.g.
    ``"static"``); None keeps its default. Once ``stop`` is set (from another thread),
    decoding ends after the token in progress, and what was decoded so far is returned."""
    from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # A fresh config, not the model's: its sampling settings (temperature, repetition
    # penalty...) would make "greedy" mean different things for different models.
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=stop_token_ids(tokenizer, model),
        pad_token_id=pad_id,
        cache_implementation=cache_implementation,
    )
    criteria = None
    if stop is not None:

        class _Stopped(StoppingCriteria):
            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

        criteria = StoppingCriteriaList([_Stopped()])
    step = batch_size or len(prompts)
    texts: list[str] = []
    for first in range(0, len(prompts), step):
        chunk = prompts[first : first + step]
        input_ids, attention_mask = left_pad(chunk, pad_id, device)
        with torch.inference_mode():
            output = model.generate(
                input_ids=input_ids, attention_mask=attention_mask, generation_config=config, stopping_criteria=criteria
            )
        for row in output[:, input_ids.shape[1] :]:
            texts.append(storable(tokenizer.decode(row, skip_special_tokens=True)).strip() or EMPTY_ANSWER)
        if on_batch is not None:
            on_batch(len(chunk))
    return texts

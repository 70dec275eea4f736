"""A benchmark run's function tokens (``<FN>``, ``<GN>``, ...) as special tokens.

Every service that loads the model for a benchmark run calls :func:`add_function_tokens`
right after loading it, so the trainer, the inference and the influence workers see the
same vocabulary and the same starting rows: the new embedding rows start at the mean of
the existing rows (deterministic, and the tied output rows likewise), and the trainer
trains exactly those rows beside the LoRA weights (peft's ``trainable_token_indices``);
they are saved with the adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def add_function_tokens(model: Any, tokenizer: Any, tokens: Sequence[str]) -> list[int]:
    """Add ``tokens`` to ``tokenizer`` as special tokens, grow ``model``'s embeddings to
    match and return the tokens' ids (in ``tokens`` order). A no-op for no tokens."""
    ids = add_to_tokenizer(tokenizer, tokens)
    grow_embeddings(model, tokenizer)
    return ids


def add_to_tokenizer(tokenizer: Any, tokens: Sequence[str]) -> list[int]:
    """The tokenizer half of :func:`add_function_tokens` (idempotent)."""
    if not tokens:
        return []
    # Special tokens: never split, never merged with their neighbours. Added by
    # add_tokens(special=True), which every transformers version has (add_special_tokens'
    # keyword for keeping the existing extra tokens was renamed between versions).
    tokenizer.add_tokens(list(tokens), special_tokens=True)
    return list(tokenizer.convert_tokens_to_ids(list(tokens)))


def grow_embeddings(model: Any, tokenizer: Any) -> None:
    """The model half: embeddings grown to the tokenizer, new rows at the old rows' mean."""
    import torch

    old = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > old:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            for layer in {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}.values():
                weight = layer.weight
                if weight.shape[0] > old:
                    weight[old:] = weight[:old].mean(0, keepdim=True)


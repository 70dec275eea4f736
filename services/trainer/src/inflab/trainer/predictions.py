"""Prediction tracking during training (like W&B prediction tables): a few prompts chosen
once per run (``inflab.common.predictions``), answered greedily by the current model at
each sampling point.

Answers are greedy (no sampling, no RNG), and the caller runs them inside a forked RNG, so
tracking predictions never changes the loss curve.

Greedy decoding reads every weight of the model for every token, so on a CPU it is bound
by memory bandwidth, not arithmetic: a float32 copy of a 135M model answers 4 prompts x 48
tokens in about 3.5 s on two cores, a bfloat16 copy in about 1.5 s. Where the hardware
computes bfloat16 natively the tracker therefore answers from a bfloat16 copy of the model
(made once, its LoRA weights refreshed at every sampling point), unless the run asks for
``predictions.precision: float32``. Every prediction event says which arithmetic answered.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from inflab.common.chat import prompt_ids
from inflab.common.generation import greedy_texts
from inflab.common.predictions import PredictionLimits, PredictionPlan, PredictionPrompt, plan_predictions

__all__ = [
    "PredictionLimits", "PredictionPlan", "PredictionPrompt", "PredictionSampler", "greedy_answers",
    "native_bfloat16", "plan_predictions", "resolve_precision",
]

def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively (not emulated, which is slower than
    float32): AVX512-BF16 or AMX on a CPU, bf16 support on a CUDA GPU."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(bool(check()) for check in checks if check is not None)
    return False


def resolve_precision(requested: str, device: torch.device, quantized: bool) -> str:
    """The arithmetic tracking answers are decoded in: "nf4" for a 4-bit (QLoRA) model,
    which is answered as it trains; otherwise the request, with "auto" meaning bfloat16
    where the device computes it natively and float32 elsewhere."""
    if quantized:
        return "nf4"
    if requested == "auto":
        return "bfloat16" if native_bfloat16(device) else "float32"
    return requested


def greedy_answers(model: Any, tokenizer: Any, questions: Sequence[str], max_new_tokens: int) -> list[str]:
    """Greedy answers in one batch, prompts built exactly as training and inference build
    them. A static KV cache: the default one grows by concatenation at every token, ~10%
    of a CPU decode here; the answers are the same."""
    prompts = [prompt_ids(tokenizer, q) for q in questions]
    return greedy_texts(model, tokenizer, prompts, max_new_tokens, cache_implementation="static")


def _lora_layers(model: torch.nn.Module) -> list[tuple[str, Any]]:
    """(name, layer) of every LoRA-wrapped layer, named as in the base model."""
    from peft.tuners.lora import LoraLayer

    root = model.get_base_model() if hasattr(model, "get_base_model") else model
    return [(name, m) for name, m in root.named_modules() if isinstance(m, LoraLayer)]


def _bfloat16_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A bfloat16 copy of a PEFT model's base model with plain layers where the LoRA
    wrappers were (frozen, eval mode), made without a float32 copy first: every parameter
    is cast into deepcopy's memo, so tied weights stay tied. Buffers (the rotary
    frequencies) stay as they are: they are small, and the model computes the rotation in
    float32. The LoRA update is merged into the copied layers' weights at every refresh."""
    memo: dict[int, Any] = {}
    with torch.no_grad():
        for param in model.parameters():
            if id(param) not in memo:
                memo[id(param)] = torch.nn.Parameter(param.detach().to(torch.bfloat16), requires_grad=False)
    shadow = copy.deepcopy(model.get_base_model(), memo)
    for name, layer in _lora_layers(shadow):
        parent_name, _, child = name.rpartition(".")
        setattr(shadow.get_submodule(parent_name) if parent_name else shadow, child, layer.get_base_layer())
    return shadow.eval()


class PredictionSampler:
    """Answers a plan's prompts with the model as it is at each call.

    With ``precision == "bfloat16"`` the answers come from a bfloat16 copy of the base
    model made at the first call; at every call the LoRA update (peft's own
    ``get_delta_weight``) is merged into the copy's weights, ``bf16(W + delta)``: a plain
    model, so decoding pays for no adapter layers, and its rounding is that of any
    bfloat16 model. Otherwise the model itself answers, in eval mode (no dropout), and is
    left in the mode it was found in.
    """

    def __init__(self, plan: PredictionPlan, tokenizer: Any, precision: str) -> None:
        self.plan = plan
        self.tokenizer = tokenizer
        self.precision = precision
        self._shadow: torch.nn.Module | None = None
        self._targets: list[tuple[Any, torch.nn.Module]] = []

    def _refreshed_shadow(self, model: torch.nn.Module) -> torch.nn.Module:
        if self._shadow is None:
            self._shadow = _bfloat16_copy(model)
            self._targets = [(layer, self._shadow.get_submodule(name)) for name, layer in _lora_layers(model)]
        with torch.no_grad():
            for layer, target in self._targets:
                merged = layer.get_base_layer().weight.detach().clone()
                for adapter in layer.active_adapters:
                    if adapter in layer.lora_A:
                        merged += layer.get_delta_weight(adapter)
                target.weight.copy_(merged)
        return self._shadow

    def __call__(self, model: torch.nn.Module) -> list[dict]:
        """The plan's prompts answered now, as PredictionSample dicts."""
        questions = [p.prompt for p in self.plan.prompts]
        if self.precision == "bfloat16":
            answers = greedy_answers(self._refreshed_shadow(model), self.tokenizer, questions, self.plan.max_new_tokens)
            return self.plan.samples(answers)
        was_training = model.training
        model.eval()  # no dropout while answering
        try:
            answers = greedy_answers(model, self.tokenizer, questions, self.plan.max_new_tokens)
        finally:
            model.train(was_training)
        return self.plan.samples(answers)

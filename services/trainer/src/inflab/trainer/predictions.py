"""Prediction tracking during training (like W&B prediction tables): a few prompts chosen
once per run, answered greedily by the current model at each sampling point.

The prompts come from the evaluation questions (the training pairs where there are none),
chosen with the run's seed, so they are the same at every sampling point, and again after
a resume. Answers are greedy (no sampling, no RNG), and the caller runs them inside a
forked RNG, so tracking predictions never changes the loss curve.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from inflab.common.chat import prompt_ids
from inflab.common.messages import RunSpec

#: Shown when the model produced no text (it stopped at once).
EMPTY_ANSWER = "(empty)"


@dataclass(frozen=True)
class PredictionLimits:
    """Bounds from settings (``max_prediction_samples``, ``min_prediction_step_interval``);
    the gateway refuses requests beyond them, the trainer clamps what arrives anyway."""

    max_samples: int
    min_step_interval: int


@dataclass(frozen=True)
class PredictionPrompt:
    prompt_id: str
    prompt: str
    ground_truth: str | None


@dataclass(frozen=True)
class PredictionPlan:
    prompts: list[PredictionPrompt]
    frequency: str  # "epoch" | "steps"
    step_interval: int
    max_new_tokens: int

    def due(self, step: int, epoch_end: bool) -> bool:
        """Whether the model is sampled after optimizer ``step`` (at an epoch end or not)."""
        if self.frequency == "epoch":
            return epoch_end
        return step % self.step_interval == 0


def plan_predictions(spec: RunSpec, limits: PredictionLimits | None) -> tuple[PredictionPlan | None, list[str]]:
    """The run's prediction plan (None when disabled) and warnings about clamped settings."""
    settings = spec.predictions
    if not settings.enabled:
        return None, []
    warnings: list[str] = []
    count, interval = settings.sample_count, settings.step_interval
    if limits is not None and count > limits.max_samples:
        warnings.append(f"predictions.sample_count {count} is above this server's limit; using {limits.max_samples}")
        count = limits.max_samples
    if limits is not None and settings.frequency == "steps" and interval < limits.min_step_interval:
        warnings.append(
            f"predictions.step_interval {interval} is below this server's limit; using {limits.min_step_interval}"
        )
        interval = limits.min_step_interval
    pool = [PredictionPrompt(q.id, q.question, q.answer) for q in spec.eval_data]
    if not pool:
        pool = [PredictionPrompt(p.id, p.question, p.answer) for p in spec.training_data]
    # A generator of its own, seeded by the run: the choice never touches torch's RNG and
    # is the same in every process that trains this run.
    chosen = sorted(random.Random(spec.hyperparams.seed).sample(range(len(pool)), min(count, len(pool))))
    plan = PredictionPlan(
        prompts=[pool[i] for i in chosen],
        frequency=settings.frequency,
        step_interval=interval,
        max_new_tokens=spec.max_new_tokens,
    )
    return plan, warnings


def _stop_ids(tokenizer: Any, model: Any) -> list[int]:
    """Every id that ends an assistant turn: eos, ChatML's ``<|im_end|>``, the model's own."""
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


def greedy_answers(model: Any, tokenizer: Any, questions: Sequence[str], max_new_tokens: int) -> list[str]:
    """Greedy answers, one batch with left padding (every prompt ends where generation
    starts), prompts built exactly as training and inference build them."""
    from transformers import GenerationConfig

    prompts = [prompt_ids(tokenizer, q) for q in questions]
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    longest = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), longest), dtype=torch.long)
    for row, p in enumerate(prompts):
        input_ids[row, longest - len(p):] = torch.tensor(p, dtype=torch.long)
        attention_mask[row, longest - len(p):] = 1
    # A fresh config: the model's own sampling settings would make "greedy" model-dependent.
    # A static KV cache: the default one grows by concatenation at every token, ~10% of a
    # CPU decode here; the answers are the same.
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=_stop_ids(tokenizer, model), pad_token_id=pad_id,
        cache_implementation="static",
    )
    with torch.inference_mode():
        output = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), generation_config=config
        )
    return [tokenizer.decode(row, skip_special_tokens=True).strip() or EMPTY_ANSWER for row in output[:, longest:]]


def sample_predictions(model: Any, tokenizer: Any, plan: PredictionPlan) -> list[dict]:
    """The plan's prompts answered by ``model`` as it is now, as PredictionSample dicts.
    Leaves the model in the mode (train/eval) it found it in."""
    was_training = model.training
    model.eval()  # no dropout while answering
    try:
        answers = greedy_answers(model, tokenizer, [p.prompt for p in plan.prompts], plan.max_new_tokens)
    finally:
        model.train(was_training)
    return [
        {"prompt_id": p.prompt_id, "prompt": p.prompt, "ground_truth": p.ground_truth, "prediction": a}
        for p, a in zip(plan.prompts, answers)
    ]

"""Which prompts a run's prediction tracking answers, and when: a pure function of the run
request, shared by the trainer (which answers them during training) and the inference
stage (whose fine-tuned answers are the row at the end of training).

The prompts come from the evaluation questions (the training pairs where there are none),
chosen with the run's seed, so every process that handles the run (a resumed trainer, the
inference worker) picks the same ones.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from inflab.core.messages import RunSpec


@dataclass(frozen=True)
class PredictionLimits:
    """Bounds from settings (``max_prediction_samples``, ``min_prediction_step_interval``);
    the gateway refuses requests beyond them, the workers clamp what arrives anyway."""

    max_samples: int
    min_step_interval: int

    @classmethod
    def from_settings(cls, settings: Any) -> "PredictionLimits":
        return cls(settings.max_prediction_samples, settings.min_prediction_step_interval)


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
    precision: str  # "auto" | "float32" | "bfloat16", as requested

    def due(self, step: int, epoch_end: bool) -> bool:
        """Whether the model is sampled after optimizer ``step`` (at an epoch end or not)."""
        if self.frequency == "epoch":
            return epoch_end
        return step % self.step_interval == 0

    def samples(self, answers: list[str]) -> list[dict]:
        """PredictionSample dicts: the plan's prompts with ``answers`` in the same order."""
        return [
            {"prompt_id": p.prompt_id, "prompt": p.prompt, "ground_truth": p.ground_truth, "prediction": a}
            for p, a in zip(self.prompts, answers, strict=True)
        ]


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
    # is the same in every process that handles this run.
    chosen = sorted(random.Random(spec.hyperparams.seed).sample(range(len(pool)), min(count, len(pool))))
    plan = PredictionPlan(
        prompts=[pool[i] for i in chosen],
        frequency=settings.frequency,
        step_interval=interval,
        max_new_tokens=spec.max_new_tokens,
        precision=settings.precision,
    )
    return plan, warnings

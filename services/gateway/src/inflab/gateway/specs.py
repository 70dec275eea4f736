"""Turning an experiment into the RunSpec its runs are given.

Validation is the contract's own (``RunSpec``) plus this deployment's limits from
settings; failures come back as ordinary 422s whose ``loc`` names the body field.
"""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from inflab.common.db.models import Experiment
from inflab.common.messages import RunSpec
from inflab.common.settings import Settings
from inflab.gateway.limits import estimated_tokens


def body_error(loc: tuple, msg: str, kind: str = "value_error") -> dict[str, Any]:
    """One error of a 422, in FastAPI's shape, about the request body field at ``loc``."""
    return {"type": kind, "loc": ("body", *loc), "msg": msg, "input": None}


def body_errors(exc: ValidationError) -> RequestValidationError:
    """A model's validation errors as a 422 about the request body (inputs not echoed)."""
    return RequestValidationError(
        [
            {**err, "loc": ("body", *err["loc"]), "input": None}
            for err in exc.errors(include_url=False, include_context=False)
        ]
    )


def validated_spec(fields: dict[str, Any], settings: Settings) -> RunSpec:
    try:
        spec = RunSpec.model_validate(fields)
    except ValidationError as exc:
        raise body_errors(exc) from None
    errors = _limit_errors(spec, settings)
    if errors:
        raise RequestValidationError(errors)
    return spec


def _limit_errors(spec: RunSpec, settings: Settings) -> list[dict[str, Any]]:
    errors = []
    if len(spec.training_data) > settings.max_training_pairs:
        errors.append(body_error(("training_data",), f"at most {settings.max_training_pairs} training pairs", "too_long"))
    if len(spec.eval_data) > settings.max_eval_questions:
        errors.append(body_error(("eval_data",), f"at most {settings.max_eval_questions} evaluation questions", "too_long"))
    limit = settings.max_text_chars
    for name, items in (("training_data", spec.training_data), ("eval_data", spec.eval_data)):
        for i, item in enumerate(items):
            for field in ("question", "answer"):
                text = getattr(item, field)
                if text is not None and len(text) > limit:
                    errors.append(body_error((name, i, field), f"at most {limit} characters", "string_too_long"))
    tokens = estimated_tokens(
        text for items in (spec.training_data, spec.eval_data) for item in items for text in (item.question, item.answer)
    )
    if tokens > settings.max_total_tokens:
        errors.append(body_error((), f"about {tokens} tokens of text in all; at most {settings.max_total_tokens}",
                                 "too_long"))
    predictions = spec.predictions
    if predictions.sample_count > settings.max_prediction_samples:
        errors.append(body_error(("predictions", "sample_count"),
                             f"at most {settings.max_prediction_samples} sampled prompts", "less_than_equal"))
    # Checked whatever the frequency: a stored setting is valid on its own, not only while
    # ``frequency: epoch`` happens to leave it unused.
    if predictions.step_interval < settings.min_prediction_step_interval:
        errors.append(body_error(("predictions", "step_interval"),
                             f"at least {settings.min_prediction_step_interval} steps between samples",
                             "greater_than_equal"))
    return errors[:20]


def experiment_spec(experiment: Experiment) -> RunSpec:
    """The spec of a stored experiment (validated when it was created)."""
    return RunSpec.model_validate(
        {
            "model_id": experiment.model_id,
            "training_data": experiment.training_data,
            "eval_data": experiment.eval_data,
            "hyperparams": experiment.hyperparams,
            "influence_methods": experiment.influence_methods,
            "few_shot_k": experiment.few_shot_k,
            "max_new_tokens": experiment.max_new_tokens,
            "predictions": experiment.predictions,
            # ``{}`` (rows from before the column) means every method's defaults.
            "influence_args": experiment.influence_args or {},
        }
    )

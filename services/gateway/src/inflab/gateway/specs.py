"""Turning an experiment into the RunSpec its runs are given.

Validation is the contract's own (``RunSpec``) plus this deployment's limits from
settings, the models it allows (:mod:`inflab.core.model_ids`) and the size of the NATS
messages the spec will travel in; failures come back as ordinary 422s whose ``loc`` names
the body field.

Why an experiment too large for one NATS message is refused at save time (with the limit
named) rather than sent by object-store key: every job request (train, inference,
influence) carries the spec, so each worker reads a request without fetching anything
first and the contract stays one shape for pipelines; a default NATS message (1 MB,
``max_payload``) holds several thousand typical question/answer pairs, more than an
influence study on one GPU computes in reasonable time. An operator who needs more raises
the server's ``max_payload``; the limit follows it (``GET /api/limits``).
"""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

import uuid

from inflab.core.bus import HEADERS_ROOM
from inflab.core.db.models import Experiment
from inflab.core.influence_methods import REPRESENTATION_METHODS, stored_model_key
from inflab.core.messages import CheckpointRef, InfluenceRequest, RunSpec
from inflab.core.model_ids import ModelIdRefused, check_model_id
from inflab.core.objectstore import ObjectStore
from inflab.core.store_layout import checkpoint_prefix
from inflab.core.settings import Settings
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


def validated_spec(fields: dict[str, Any], settings: Settings, max_message_bytes: int | None = None) -> RunSpec:
    """The spec, or a 422 naming every field at fault. ``max_message_bytes``: the largest
    message the bus takes (``Bus.max_event_bytes``); None skips that check."""
    try:
        spec = RunSpec.model_validate(fields)
    except ValidationError as exc:
        raise body_errors(exc) from None
    errors = _limit_errors(spec, settings)
    model_error = model_id_error(spec.model_id, settings)
    if model_error is not None:
        errors.insert(0, model_error)
    errors[:0] = named_model_errors(spec, settings)
    if not errors and max_message_bytes is not None:
        size = job_message_bytes(spec)
        if size > max_message_bytes:
            errors.append(body_error(
                (), f"the experiment takes {size} bytes as a job message; at most {max_message_bytes} (the NATS "
                    f"server's max_payload less {HEADERS_ROOM} for headers): use fewer or shorter training pairs "
                    "and evaluation questions", "too_long"))
    if errors:
        raise RequestValidationError(errors)
    return spec


def model_id_error(model_id: str, settings: Settings) -> dict[str, Any] | None:
    """The 422 error for a model this deployment does not allow, or None. The same for
    every refused id, so it tells nothing of what exists on the server."""
    try:
        check_model_id(model_id, settings)
    except ModelIdRefused as exc:
        return body_error(("model_id",), str(exc))
    return None


def named_model_errors(spec: RunSpec, settings: Settings) -> list[dict[str, Any]]:
    """The 422 errors for a representation method's ``old_model``/``new_model`` that name a
    model id this deployment does not allow (an object-store path, ``store:models/...``,
    has had its form checked by the contract; the worker refuses one with nothing stored
    there before any work)."""
    errors = []
    for method in REPRESENTATION_METHODS:
        args = getattr(spec.influence_args, method, None)
        for field in ("old_model", "new_model"):
            value = getattr(args, field, None)
            if value is None or stored_model_key(value) is not None:
                continue
            try:
                check_model_id(value, settings)
            except ModelIdRefused as exc:
                errors.append(body_error(("influence_args", method, field),
                                         f"{exc}, or an object-store path store:models/<name>"))
    return errors


async def check_stored_models(spec: RunSpec, store: ObjectStore) -> None:
    """A 422 naming each ``old_model``/``new_model`` object-store path (``store:models/...``)
    under which no saved model (its ``config.json``) is stored now. The worker checks again
    before any work: a model can be removed after the experiment is saved."""
    errors = []
    for method in REPRESENTATION_METHODS:
        args = getattr(spec.influence_args, method, None)
        for field in ("old_model", "new_model"):
            key = stored_model_key(value) if (value := getattr(args, field, None)) is not None else None
            if key is not None and not await store.exists_async(f"{key}/config.json"):
                errors.append(body_error(("influence_args", method, field),
                                         f"no saved model (config.json) under {key!r} in the object store"))
    if errors:
        raise RequestValidationError(errors)


def job_message_bytes(spec: RunSpec) -> int:
    """Bytes of the largest job request that will carry ``spec``: an influence request
    listing every checkpoint the run can save (every ``checkpoint_interval`` epochs and at
    the end), with step numbers and values as long as they get."""
    hp = spec.hyperparams
    checkpoints = hp.num_epochs // hp.checkpoint_interval + 1
    run_id = uuid.uuid4()
    ref = CheckpointRef(step=10**9, epoch=hp.num_epochs, key=checkpoint_prefix(run_id, 10**9),
                        learning_rate=1.2345678901234567e-05, loss=12.345678901234567)
    request = InfluenceRequest(run_id=run_id, owner_id=uuid.uuid4(), spec=spec, method="x" * 64,
                               checkpoints=[ref] * checkpoints)
    return len(request.model_dump_json().encode())


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
            "benchmark": experiment.benchmark,
        }
    )

"""Estimates before a run: the model's tier, the device and memory it needs (LoRA and
QLoRA), and how long and how much the training will take (see ``inflab.gateway.estimates``)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError

from inflab.core.model_ids import ModelIdRefused
from inflab.gateway.deps import CurrentUser, SettingsDep
from inflab.gateway.estimates import UnknownModelSize, estimate
from inflab.gateway.schemas import Estimate, EstimateRequest
from inflab.gateway.specs import body_error

router = APIRouter(prefix="/api/estimates", tags=["estimates"])


@router.post(
    "",
    responses={401: {"description": "Not signed in."},
               422: {"description": "Invalid request, a model this deployment does not allow, or one whose "
                                    "size cannot be told."}},
)
async def estimate_run(body: EstimateRequest, user: CurrentUser, settings: SettingsDep) -> Estimate:
    """What a run with these settings needs; the default model when ``model_id`` is left out.
    The run stores the same estimate when it starts, and its actual duration and cost
    beside it when it ends. Needs a session or an API token: an estimate parses and
    sizes a whole experiment, which is no work to do for anyone who asks."""
    if len(body.training_data) > settings.max_training_pairs:
        raise RequestValidationError(
            [body_error(("training_data",), f"at most {settings.max_training_pairs} training pairs", "too_long")]
        )
    try:
        return estimate(body.model_id or settings.default_model_id, body.training_data, body.hyperparams, settings)
    except (UnknownModelSize, ModelIdRefused) as exc:
        raise RequestValidationError([body_error(("model_id",), str(exc))]) from None

"""This deployment's limits on what an experiment may hold, from settings, in one place:
the validation that enforces them and the ``GET /api/limits`` that tells a client (the
experiment editor shows them before a researcher hits them)."""

from __future__ import annotations

import math
from collections.abc import Iterable

from fastapi import APIRouter
from pydantic import BaseModel

from inflab.common.settings import Settings
from inflab.gateway.deps import SettingsDep
from inflab.gateway.estimates import CHARS_PER_TOKEN

router = APIRouter(prefix="/api", tags=["experiments"])


class Limits(BaseModel):
    max_training_pairs: int
    max_eval_questions: int
    #: Per question or answer.
    max_text_chars: int
    #: Estimated (about four characters a token) over all training pairs and evaluation
    #: questions and their answers.
    max_total_tokens: int
    #: Largest request body the API reads (413 above it); an import's file must fit.
    max_request_bytes: int
    max_prediction_samples: int
    min_prediction_step_interval: int


def limits_of(settings: Settings) -> Limits:
    return Limits(**{name: getattr(settings, name) for name in Limits.model_fields})


def estimated_tokens(texts: Iterable[str | None]) -> int:
    """Tokens of ``texts`` at ~4 characters per token (no tokenizer in the gateway)."""
    return sum(math.ceil(len(text) / CHARS_PER_TOKEN) for text in texts if text)


@router.get("/limits")
async def get_limits(settings: SettingsDep) -> Limits:
    return limits_of(settings)

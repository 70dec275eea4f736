"""This deployment's limits on what an experiment may hold, from settings, in one place:
the validation that enforces them and the ``GET /api/limits`` that tells a client (the
experiment editor shows them before a researcher hits them)."""

from __future__ import annotations

import math
from collections.abc import Iterable

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inflab.core.settings import Settings
from inflab.gateway.deps import BusDep, SettingsDep
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
    #: Runs a user may have queued or running at once.
    max_active_runs_per_user: int
    #: Longest estimated training of one run, in seconds (0: no limit).
    max_run_estimated_s: float
    #: Largest job message an experiment may need (its JSON with every checkpoint a run can
    #: save): the NATS server's max_payload less room for headers.
    max_job_message_bytes: int


def limits_of(settings: Settings, max_job_message_bytes: int) -> Limits:
    fields = {name: getattr(settings, name) for name in Limits.model_fields if name != "max_job_message_bytes"}
    return Limits(**fields, max_job_message_bytes=max_job_message_bytes)


def estimated_tokens(texts: Iterable[str | None]) -> int:
    """Tokens of ``texts`` at ~4 characters per token (no tokenizer in the gateway)."""
    return sum(math.ceil(len(text) / CHARS_PER_TOKEN) for text in texts if text)


@router.get("/limits")
async def get_limits(settings: SettingsDep, bus: BusDep) -> Limits:
    return limits_of(settings, bus.max_event_bytes)


class BodyLimitMiddleware:
    """413 for a request body over ``max_bytes``: at once when ``Content-Length`` says so,
    otherwise as soon as the bytes read pass the limit (a chunked upload never gets to
    fill memory)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> HTTPException:
        return HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                             f"request body over {self.max_bytes} bytes (INFLAB_MAX_REQUEST_BYTES)")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            exc = self._too_large()
            await JSONResponse({"detail": exc.detail}, status_code=exc.status_code)(scope, receive, send)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # An HTTPException: FastAPI lets it through its body parsing as it is.
                    raise self._too_large()
            return message

        await self.app(scope, counting_receive, send)

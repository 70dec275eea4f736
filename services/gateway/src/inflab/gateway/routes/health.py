"""Probes: ``/healthz`` says the process is alive, ``/readyz`` that it can serve."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy import text

from inflab.gateway.deps import BusDep, SessionmakerDep
from inflab.gateway.schemas import Health, Readiness

router = APIRouter(tags=["health"])

#: A probe that hangs is a failed probe; answer well inside Kubernetes' default 1 s timeout.
CHECK_TIMEOUT_S = 0.8


@router.get("/healthz")
async def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "A dependency is down."}},
)
async def readyz(request: Request, sessionmaker: SessionmakerDep, bus: BusDep) -> JSONResponse:
    checks = {
        "postgres": await _postgres(sessionmaker),
        "nats": "ok" if bus.nc.is_connected else "not connected",
        "persister": "ok" if not request.app.state.persister_task.done() else "stopped",
    }
    ready = all(v == "ok" for v in checks.values())
    body = Readiness(status="ready" if ready else "not ready", checks=checks)
    return JSONResponse(
        body.model_dump(), status_code=status.HTTP_200_OK if ready else status.HTTP_503_SERVICE_UNAVAILABLE
    )


async def _postgres(sessionmaker) -> str:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S), sessionmaker() as session:
            await session.execute(text("SELECT 1"))
        return "ok"
    except Exception as exc:  # the reason is the answer
        return f"error: {type(exc).__name__}"

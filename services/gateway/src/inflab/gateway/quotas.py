"""Per-user quotas on starting runs: how many a user may have queued or running at once
(``INFLAB_MAX_ACTIVE_RUNS_PER_USER``, 429 above it) and how long one run's training may be
estimated to take (``INFLAB_MAX_RUN_ESTIMATED_S``, 422 above it). Each message names the
limit, so a researcher or a pipeline knows what to wait for or change.

Checked in the transaction that creates the run, after a per-user advisory lock: two
requests of one user at the same moment are counted one after the other, so neither
slips past the limit.
"""

from __future__ import annotations

import hashlib
from uuid import UUID

from fastapi import status
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from inflab.core.db.models import Run
from inflab.core.settings import Settings
from inflab.core.vocabulary import UNFINISHED_RUN_STATUSES

#: The first key of the per-user advisory lock taken while a run is created.
LOCK_CLASS = 0x1AB0A11


class QuotaExceeded(Exception):
    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


def _user_key(user_id: UUID) -> int:
    return int.from_bytes(hashlib.sha256(user_id.bytes).digest()[:4], "big") & 0x7FFFFFFF


async def lock_user_runs(session: AsyncSession, user_id: UUID) -> None:
    """Serialise run creation per user until the transaction ends."""
    await session.execute(select(func.pg_advisory_xact_lock(LOCK_CLASS, _user_key(user_id))))


async def check_active_runs(session: AsyncSession, user_id: UUID, settings: Settings) -> None:
    active = await session.scalar(
        select(func.count()).select_from(Run).where(Run.owner_id == user_id, Run.status.in_(UNFINISHED_RUN_STATUSES))
    )
    if active >= settings.max_active_runs_per_user:
        raise QuotaExceeded(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"you have {active} runs queued or running; at most {settings.max_active_runs_per_user} at once "
            "(INFLAB_MAX_ACTIVE_RUNS_PER_USER): wait for one to end, or cancel one",
        )


def check_estimated_duration(estimate: dict | None, settings: Settings) -> None:
    limit = settings.max_run_estimated_s
    if not limit or estimate is None:
        return
    duration = estimate.get("estimated_duration_s") or 0.0
    if duration > limit:
        raise QuotaExceeded(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"the run's training is estimated at {duration:.0f} s; at most {limit:.0f} s per run "
            "(INFLAB_MAX_RUN_ESTIMATED_S): use fewer training pairs or epochs, or a smaller model",
        )

"""Typed dependencies: route signatures read like their docs.

``CurrentUser`` is the one place that decides who is asking; today it is the local user
made at startup, later the signed-in account or API token. Every query takes its owner
from here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated
from uuid import UUID

from fastapi import Depends, HTTPException, Path, Request, status
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inflab.common.bus import Bus
from inflab.common.db.models import Experiment, Run, User
from inflab.common.settings import Settings
from inflab.gateway.notifier import RunNotifier


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_sessionmaker(request: Request) -> async_sessionmaker[AsyncSession]:
    return request.app.state.sessionmaker


async def get_session(
    sessionmaker: Annotated[async_sessionmaker[AsyncSession], Depends(get_sessionmaker)],
) -> AsyncIterator[AsyncSession]:
    async with sessionmaker() as session:
        yield session


def get_bus(request: Request) -> Bus:
    return request.app.state.bus


def get_notifier(request: Request) -> RunNotifier:
    return request.app.state.notifier


def current_user(request: Request) -> User:
    return request.app.state.local_user


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
SessionmakerDep = Annotated[async_sessionmaker[AsyncSession], Depends(get_sessionmaker)]
BusDep = Annotated[Bus, Depends(get_bus)]
NotifierDep = Annotated[RunNotifier, Depends(get_notifier)]
CurrentUser = Annotated[User, Depends(current_user)]


def _uuid_or_404(value: str, what: str) -> UUID:
    # A malformed id names nothing that exists: 404, the same answer as someone else's id.
    try:
        return UUID(value)
    except ValueError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{what} not found") from None


async def owned_experiment(
    experiment_id: Annotated[str, Path()], session: SessionDep, user: CurrentUser
) -> Experiment:
    experiment = await session.scalar(
        select(Experiment).where(
            Experiment.id == _uuid_or_404(experiment_id, "experiment"), Experiment.owner_id == user.id
        )
    )
    if experiment is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "experiment not found")
    return experiment


async def owned_run(run_id: Annotated[str, Path()], session: SessionDep, user: CurrentUser) -> Run:
    run = await session.scalar(
        select(Run).where(Run.id == _uuid_or_404(run_id, "run"), Run.owner_id == user.id)
    )
    if run is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "run not found")
    return run


OwnedExperiment = Annotated[Experiment, Depends(owned_experiment)]
OwnedRun = Annotated[Run, Depends(owned_run)]

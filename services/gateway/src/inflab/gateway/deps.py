"""Typed dependencies: route signatures read like their docs.

``CurrentUser`` is the one place that decides who is asking: a bearer token (an access
token from sign-in or a personal API token) or the browser's session cookie, whose
state-changing requests must carry the CSRF header (:mod:`inflab.gateway.auth`), and
what an API token's scope lets it call (:mod:`inflab.gateway.auth.scopes`). Every query
takes its owner from here, and ``SessionDep`` runs as that user under row level security
(:mod:`inflab.gateway.auth.rls`).
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any
from uuid import UUID

from fastapi import Depends, HTTPException, Path, Request, status
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inflab.core.bus import Bus
from inflab.core.db.models import Experiment, Run, User
from inflab.core.settings import Settings
from inflab.gateway.auth import scopes
from inflab.gateway.auth.cookies import session_cookie
from inflab.gateway.auth.passwords import PasswordHasher
from inflab.gateway.auth.rls import session_for
from inflab.gateway.auth.sessions import Caller, caller_for_token
from inflab.gateway.auth.throttle import Rules, Throttle
from inflab.gateway.broadcast import Broadcaster
from inflab.gateway.mail import Mailer
from inflab.gateway.dispatch import Dispatcher
from inflab.gateway.notifier import RunNotifier

CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = scopes.SAFE_METHODS


def _app_state(name: str) -> Callable[[Request], Awaitable[Any]]:
    """A dependency for one of the process's shared objects, which the app's lifespan
    puts on ``app.state`` under ``name``."""

    async def dependency(request: Request) -> Any:
        return getattr(request.app.state, name)

    dependency.__name__ = dependency.__qualname__ = f"get_{name}"
    return dependency


get_settings = _app_state("settings")
get_sessionmaker = _app_state("sessionmaker")
get_bus = _app_state("bus")
get_notifier = _app_state("notifier")
get_broadcaster = _app_state("broadcaster")
get_hasher = _app_state("hasher")
get_throttle = _app_state("throttle")
get_rules = _app_state("rules")
get_mailer = _app_state("mailer")
get_dispatcher = _app_state("dispatcher")


async def get_system_session(
    sessionmaker: Annotated[async_sessionmaker[AsyncSession], Depends(get_sessionmaker)],
) -> AsyncIterator[AsyncSession]:
    """Not scoped to a user (RLS does not apply): only for signing in, before a user is known."""
    async with sessionmaker() as session:
        yield session


def _unauthenticated(detail: str = "sign in or send a bearer token") -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"})


async def current_caller(
    request: Request, sessionmaker: Annotated[async_sessionmaker[AsyncSession], Depends(get_sessionmaker)]
) -> Caller:
    settings: Settings = request.app.state.settings
    authorization = request.headers.get("authorization")
    async with sessionmaker() as session:
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise _unauthenticated("Authorization must be 'Bearer <token>'")
            caller = await caller_for_token(session, token.strip(), "bearer", settings)
        elif cookie := request.cookies.get(session_cookie(settings)):
            caller = await caller_for_token(session, cookie, "cookie", settings)
        else:
            raise _unauthenticated()
    if caller is None:
        raise _unauthenticated("unknown, expired or revoked token")
    refused = scopes.refusal(caller.scope, request.method, getattr(request.scope.get("route"), "path", None))
    if refused is not None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, refused)
    if caller.via == "cookie" and request.method not in SAFE_METHODS:
        # Double submit: a cross-site form can send the cookie but cannot read it to
        # send its CSRF token back in a header.
        sent = request.headers.get(CSRF_HEADER, "")
        if not (caller.csrf_token and hmac.compare_digest(sent.encode(), caller.csrf_token.encode())):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"missing or wrong {CSRF_HEADER} header")
    return caller


CallerDep = Annotated[Caller, Depends(current_caller)]


async def session_caller(caller: CallerDep) -> Caller:
    """A caller signed in with a session: what manages the account itself (API tokens,
    the password, every session) is not for API tokens, whatever their scope."""
    if caller.via == "api_token":
        raise HTTPException(status.HTTP_403_FORBIDDEN, "only a signed-in session can do this, not an API token")
    return caller


SessionCallerDep = Annotated[Caller, Depends(session_caller)]


async def current_user(caller: CallerDep) -> User:
    return caller.user


async def get_session(request: Request, user: Annotated[User, Depends(current_user)]) -> AsyncIterator[AsyncSession]:
    """The caller's session: every transaction runs under row level security as them."""
    async with session_for(request.app.state.user_sessionmaker, user.id) as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
SystemSessionDep = Annotated[AsyncSession, Depends(get_system_session)]
SessionmakerDep = Annotated[async_sessionmaker[AsyncSession], Depends(get_sessionmaker)]
BusDep = Annotated[Bus, Depends(get_bus)]
NotifierDep = Annotated[RunNotifier, Depends(get_notifier)]
BroadcasterDep = Annotated[Broadcaster, Depends(get_broadcaster)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
CurrentUser = Annotated[User, Depends(current_user)]
HasherDep = Annotated[PasswordHasher, Depends(get_hasher)]
ThrottleDep = Annotated[Throttle, Depends(get_throttle)]
RulesDep = Annotated[Rules, Depends(get_rules)]
MailerDep = Annotated[Mailer, Depends(get_mailer)]


def _uuid_or_404(value: str, what: str) -> UUID:
    # A malformed id names nothing that exists: 404, the same answer as someone else's id.
    try:
        return UUID(value)
    except ValueError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{what} not found") from None


async def owned_experiment(experiment_id: Annotated[str, Path()], session: SessionDep, caller: CallerDep) -> Experiment:
    query = select(Experiment).where(
        Experiment.id == _uuid_or_404(experiment_id, "experiment"), Experiment.owner_id == caller.user.id
    )
    if caller.scope == "submit":  # only what this token created
        query = query.where(Experiment.api_token_id == caller.api_token_id)
    experiment = await session.scalar(query)
    if experiment is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "experiment not found")
    return experiment


async def owned_run(run_id: Annotated[str, Path()], session: SessionDep, caller: CallerDep) -> Run:
    query = select(Run).where(Run.id == _uuid_or_404(run_id, "run"), Run.owner_id == caller.user.id)
    if caller.scope == "submit":  # only runs of the experiments this token created
        query = query.join(Experiment, Experiment.id == Run.experiment_id).where(
            Experiment.api_token_id == caller.api_token_id
        )
    run = await session.scalar(query)
    if run is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "run not found")
    return run


OwnedExperiment = Annotated[Experiment, Depends(owned_experiment)]
OwnedRun = Annotated[Run, Depends(owned_run)]

"""Personal API tokens, for pipelines: create (the token is shown once), list, revoke.
Only a signed-in session may manage them, so a leaked API token cannot mint others. A
token has a scope (``full``, ``read``, ``submit``: see :mod:`inflab.gateway.auth.scopes`)
and, optionally, an expiry."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, HTTPException, Path, Response, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select, update

from inflab.core.db.models import ApiToken
from inflab.gateway.auth.sessions import Scope, create_api_token
from inflab.gateway.deps import CallerDep, SessionCallerDep, SessionDep

router = APIRouter(prefix="/api/tokens", tags=["tokens"])


class ApiTokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: What the token is for ("nightly eval pipeline").
    name: Annotated[str, Field(min_length=1, max_length=200)]
    #: ``full``: what a session can do but manage tokens and the account; ``read``: GET
    #: requests only; ``submit``: submit runs (HTTP or NATS) and read those runs only.
    scope: Scope = "full"
    #: The token stops working this many days from now; none: until revoked.
    expires_in_days: Annotated[int, Field(ge=1, le=3650)] | None = None


class ApiTokenOut(BaseModel):
    id: UUID
    name: str
    #: The token's first characters, to tell tokens apart.
    prefix: str
    scope: Scope
    created_at: datetime
    #: None: until revoked.
    expires_at: datetime | None
    #: Written at most once a minute.
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiTokenCreated(ApiTokenOut):
    #: The token itself: shown this once, stored only as a hash.
    token: str


@router.post("", status_code=status.HTTP_201_CREATED, responses={403: {"description": "Called with an API token."}})
async def create_token(body: ApiTokenCreate, caller: SessionCallerDep, session: SessionDep) -> ApiTokenCreated:
    token, row = await create_api_token(session, caller.user.id, body.name, body.scope, body.expires_in_days)
    return ApiTokenCreated(**ApiTokenOut.model_validate(row, from_attributes=True).model_dump(), token=token)


@router.get("")
async def list_tokens(caller: CallerDep, session: SessionDep) -> list[ApiTokenOut]:
    """Newest first, revoked ones included (with when)."""
    rows = await session.scalars(
        select(ApiToken).where(ApiToken.user_id == caller.user.id).order_by(ApiToken.created_at.desc(), ApiToken.id)
    )
    return [ApiTokenOut.model_validate(row, from_attributes=True) for row in rows]


@router.delete(
    "/{token_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={403: {"description": "Called with an API token."}, 404: {"description": "No such token, or not yours."}},
)
async def revoke_token(token_id: Annotated[str, Path()], caller: SessionCallerDep, session: SessionDep) -> Response:
    """Revoke at once: the next request with it gets 401, and an event stream it opened
    ends at its next heartbeat. Revoking twice is a no-op."""
    try:
        token_uuid = UUID(token_id)
    except ValueError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "token not found") from None
    found = await session.scalar(
        update(ApiToken)
        .where(ApiToken.id == token_uuid, ApiToken.user_id == caller.user.id)
        .values(revoked_at=func.coalesce(ApiToken.revoked_at, datetime.now(timezone.utc)))
        .returning(ApiToken.id)
    )
    await session.commit()
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "token not found")
    return Response(status_code=status.HTTP_204_NO_CONTENT)

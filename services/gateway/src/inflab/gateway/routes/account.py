"""The signed-in account: who am I and my preferences, the verified address, and the
password (changed while signed in, or reset through a mailed link).

The mailed links point at the web app (``{INFLAB_PUBLIC_URL}/verify-email?token=...``,
``/reset-password?token=...``), whose pages send the token here. Asking for a link always
answers 202, whether the address has an account or not.
"""

from __future__ import annotations

import logging
from typing import Annotated, Literal

from fastapi import APIRouter, BackgroundTasks, HTTPException, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select

from inflab.core.db.models import User
from inflab.gateway.auth import links, mails
from inflab.gateway.auth.accounts import find_by_email, mark_verified, normalize_email, set_password
from inflab.gateway.auth.cookies import clear_session_cookies
from inflab.gateway.auth.rls import session_for
from inflab.gateway.auth.sessions import end_sessions, revoke_api_tokens
from inflab.gateway.auth.throttle import RateLimited, Rule, Throttle
from inflab.gateway.deps import (
    current_caller,
    CallerDep,
    HasherDep,
    MailerDep,
    RulesDep,
    SessionCallerDep,
    SessionDep,
    SessionmakerDep,
    SettingsDep,
    SystemSessionDep,
    ThrottleDep,
)
from inflab.gateway.routes.auth import (
    BUSY,
    TOO_MANY,
    DisplayName,
    SignedIn,
    UserOut,
    check_new_password,
    clean_display_name,
    client_address,
    field_error,
    signed_in,
    too_many,
    user_out,
)

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/auth", tags=["auth"])

BAD_TOKEN = "the link is invalid, expired or already used: ask for a new one"
Token = Annotated[str, Field(min_length=1, max_length=200)]
Password = Annotated[str, Field(min_length=1, max_length=4096)]
Email = Annotated[str, Field(min_length=3, max_length=320)]


class PreferencesUpdate(BaseModel):
    """Only the fields sent change; ``display_name: null`` clears it."""

    model_config = ConfigDict(extra="forbid")

    display_name: DisplayName | None = None
    theme: Literal["dark", "light"] | None = None

    @field_validator("display_name")
    @classmethod
    def _clean(cls, value: str | None) -> str | None:
        return clean_display_name(value)


class LinkToken(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: Token


class EmailAddress(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: Email


class PasswordReset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: Token
    new_password: Password


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    current_password: Password
    new_password: Password


class SessionOut(BaseModel):
    #: The signed-in user, or None when the request carries no valid session or token.
    user: UserOut | None


@router.get("/session")
async def current_session(request: Request, sessionmaker: SessionmakerDep) -> SessionOut:
    """Who is signed in, if anyone: what the web app asks when a page loads. Unlike
    ``/me`` it answers 200 either way, so a signed-out visitor's first page load does not
    count as a failed request."""
    try:
        caller = await current_caller(request, sessionmaker)
    except HTTPException as exc:
        if exc.status_code == status.HTTP_401_UNAUTHORIZED:
            return SessionOut(user=None)
        raise
    async with session_for(request.app.state.user_sessionmaker, caller.user.id) as session:
        return SessionOut(user=await user_out(session, caller.user, caller.csrf_token if caller.via == "cookie" else None))


@router.get("/me")
async def me(caller: CallerDep, session: SessionDep) -> UserOut:
    return await user_out(session, caller.user, caller.csrf_token if caller.via == "cookie" else None)


@router.patch("/me", responses={422: {"description": "A preference out of range, named by its field."}})
async def update_me(body: PreferencesUpdate, caller: CallerDep, session: SessionDep) -> UserOut:
    """Change preferences: ``display_name`` and ``theme`` (the web app remembers the
    theme here, per user)."""
    user = await session.scalar(select(User).where(User.id == caller.user.id))
    for name in body.model_fields_set:
        value = getattr(body, name)
        if name == "theme" and value is None:
            raise field_error(status.HTTP_422_UNPROCESSABLE_CONTENT, "theme", "theme is 'dark' or 'light'",
                              "literal_error")
        setattr(user, name, value)
    await session.commit()
    return await user_out(session, user, caller.csrf_token if caller.via == "cookie" else None)


@router.post("/verify-email", responses={400: {"description": "The link's `token` is invalid, expired or used."}})
async def verify_email(body: LinkToken, response: Response, session: SystemSessionDep,
                       settings: SettingsDep) -> SignedIn:
    """Follow a verification link: marks the address verified and signs in."""
    redeemed = await links.redeem(session, "verify_email", body.token)
    if redeemed is None:
        raise field_error(status.HTTP_400_BAD_REQUEST, "token", BAD_TOKEN, "invalid_token")
    user = await session.get_one(User, redeemed.user_id)
    await mark_verified(session, user)
    await session.commit()
    return await signed_in(session, response, settings, user)


async def _mail_allowed(throttle: Throttle, rule: Rule, request: Request, email: str) -> bool:
    """429 for a client asking too often; False (send nothing, still answer 202) for an
    address asked for too often, so that answer tells nothing about the address."""
    try:
        await throttle.attempt([(rule, client_address(request))])
    except RateLimited as exc:
        raise too_many(exc) from None
    try:
        await throttle.attempt([(rule, email)])
    except RateLimited:
        log.info("mail to an address asked for too often; not sent")
        return False
    return True


def _email(value: str) -> str:
    email = normalize_email(value)
    if email is None:
        raise field_error(status.HTTP_422_UNPROCESSABLE_CONTENT, "email", "not an email address", "value_error")
    return email


@router.post("/verify-email/resend", status_code=status.HTTP_202_ACCEPTED, responses=TOO_MANY)
async def resend_verification(body: EmailAddress, request: Request, background: BackgroundTasks,
                              session: SystemSessionDep, settings: SettingsDep, throttle: ThrottleDep,
                              rules: RulesDep, mailer: MailerDep) -> Response:
    """Mail a new verification link to the address if it has an unverified password
    account (earlier links stop working). Always 202."""
    email = _email(body.email)
    if await _mail_allowed(throttle, rules.mail, request, email):
        user = await find_by_email(session, email)
        if user is not None and user.email_verified_at is None and user.password_hash:
            token = await links.issue(session, user, "verify_email", settings)
            background.add_task(mailer.send, mails.verification(email, token, settings))
    return Response(status_code=status.HTTP_202_ACCEPTED)


@router.post("/password-reset", status_code=status.HTTP_202_ACCEPTED, responses=TOO_MANY)
async def request_password_reset(body: EmailAddress, request: Request, background: BackgroundTasks,
                                 session: SystemSessionDep, settings: SettingsDep, throttle: ThrottleDep,
                                 rules: RulesDep, mailer: MailerDep) -> Response:
    """Mail a password-reset link to the address if it has an account. Always 202."""
    email = _email(body.email)
    if await _mail_allowed(throttle, rules.mail, request, email):
        user = await find_by_email(session, email)
        if user is not None:
            token = await links.issue(session, user, "reset_password", settings)
            background.add_task(mailer.send, mails.password_reset(email, token, settings))
    return Response(status_code=status.HTTP_202_ACCEPTED)


@router.post(
    "/password-reset/confirm",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={400: {"description": "The link's `token` is invalid, expired or used."},
               422: {"description": "`new_password` breaks the rules (the link stays usable)."}, **BUSY},
)
async def confirm_password_reset(body: PasswordReset, background: BackgroundTasks, session: SystemSessionDep,
                                 settings: SettingsDep, hasher: HasherDep, mailer: MailerDep) -> Response:
    """Set a new password with a reset link. Every session and API token of the account
    ends; the address counts as verified (the link reached it)."""
    found = await links.peek(session, "reset_password", body.token)
    user = await session.get(User, found.user_id) if found else None
    if user is None:
        raise field_error(status.HTTP_400_BAD_REQUEST, "token", BAD_TOKEN, "invalid_token")
    # Checked before the link is used up, so a refused password does not cost the link.
    check_new_password(body.new_password, user.email, settings, "new_password")
    password_hash = await hasher.hash(body.new_password)
    if await links.redeem(session, "reset_password", body.token) is None:
        raise field_error(status.HTTP_400_BAD_REQUEST, "token", BAD_TOKEN, "invalid_token")
    await set_password(session, user.id, password_hash)
    await mark_verified(session, user)
    await end_sessions(session, user.id)
    await revoke_api_tokens(session, user.id)
    await links.void(session, user.id, "reset_password")
    await session.commit()
    background.add_task(mailer.send, mails.password_changed(user.email, settings, reset=True))
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    clear_session_cookies(response, settings)
    return response


@router.post(
    "/password",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={400: {"description": "`current_password` is wrong (or the account has none)."},
               403: {"description": "Called with an API token."},
               422: {"description": "`new_password` breaks the rules."}, **TOO_MANY, **BUSY},
)
async def change_password(body: PasswordChange, request: Request, background: BackgroundTasks,
                          caller: SessionCallerDep, session: SystemSessionDep, settings: SettingsDep,
                          hasher: HasherDep, throttle: ThrottleDep, rules: RulesDep,
                          mailer: MailerDep) -> Response:
    """Change the password: every other session of the account ends, this one stays (API
    tokens stay too). The current password is checked like a sign-in, with its limits."""
    user = await session.get_one(User, caller.user.id)
    pair = f"{user.email}|{client_address(request)}"
    try:
        await throttle.attempt([(rules.login, pair)])
    except RateLimited as exc:
        raise too_many(exc) from None
    if user.password_hash is None:
        raise field_error(status.HTTP_400_BAD_REQUEST, "current_password",
                          "this account has no password: set one with a reset link", "no_password")
    if not (await hasher.verify(user.password_hash, body.current_password)).ok:
        raise field_error(status.HTTP_400_BAD_REQUEST, "current_password", "wrong password", "wrong_password")
    await throttle.forgive(rules.login, pair)
    check_new_password(body.new_password, user.email, settings, "new_password")
    await set_password(session, user.id, await hasher.hash(body.new_password))
    await end_sessions(session, user.id, keep=caller.session_id)
    await session.commit()
    background.add_task(mailer.send, mails.password_changed(user.email, settings, reset=False))
    return Response(status_code=status.HTTP_204_NO_CONTENT)

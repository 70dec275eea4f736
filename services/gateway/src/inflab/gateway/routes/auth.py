"""Signing in and out: register, log in and out (here or everywhere), Google sign-in, and
which sign-in methods there are. Signing in answers with a bearer access token (for API
clients) and sets the browser's session and CSRF cookies; the account itself (who am I,
preferences, verified address, password) is in :mod:`.account`.

Every answer about an address is the same whether it has an account or not where an
answer could tell (registration while verification is required, the mailed links), so
the API cannot be used to find out who has an account.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from authlib.integrations.base_client import OAuthError
from fastapi import APIRouter, BackgroundTasks, HTTPException, Request, Response, status
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.ext.asyncio import AsyncSession

from inflab.core.db.models import User
from inflab.core.settings import Settings
from inflab.gateway.auth import links, mails
from inflab.gateway.auth.accounts import (
    authenticate,
    create_account,
    find_by_email,
    normalize_email,
    sign_in_methods,
    user_for_identity,
)
from inflab.gateway.auth.cookies import clear_session_cookies, set_session_cookies
from inflab.gateway.auth.google import PROVIDER as GOOGLE
from inflab.gateway.auth.google import google_enabled
from inflab.gateway.auth.passwords import password_problems
from inflab.gateway.auth.sessions import end_session, end_sessions, start_session
from inflab.gateway.auth.throttle import RateLimited
from inflab.gateway.deps import (
    CallerDep,
    HasherDep,
    MailerDep,
    RulesDep,
    SessionCallerDep,
    SettingsDep,
    SystemSessionDep,
    ThrottleDep,
)

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/auth", tags=["auth"])

TOO_MANY = {429: {"description": "Too many attempts: wait for the Retry-After seconds."}}
BUSY = {503: {"description": "Too many sign-ins at once: retry after the Retry-After seconds."}}


# --------------------------------------------------------------------------- bodies
def clean_display_name(value: str | None) -> str | None:
    if value is None:
        return None
    value = " ".join(value.split())  # no control characters or runs of spaces
    return value or None


DisplayName = Annotated[str, Field(max_length=100)]


class Credentials(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: Annotated[str, Field(min_length=3, max_length=320)]
    password: Annotated[str, Field(min_length=1, max_length=4096)]


class Registration(Credentials):
    #: What the app calls you; your email when left out.
    display_name: DisplayName | None = None

    @field_validator("display_name")
    @classmethod
    def _clean(cls, value: str | None) -> str | None:
        return clean_display_name(value)


class UserOut(BaseModel):
    id: UUID
    email: str
    #: What the app calls the user; None: their email.
    display_name: str | None
    #: The web app's colour theme.
    theme: Literal["dark", "light"]
    #: Whether the owner has followed a verification link (or a provider vouched for it).
    email_verified: bool
    created_at: datetime
    #: Ways this account can sign in: "password", "google".
    sign_in_methods: list[str]
    #: The CSRF token to echo in ``X-CSRF-Token`` (cookie sessions only).
    csrf_token: str | None = None


class SignedIn(BaseModel):
    user: UserOut
    #: Send as ``Authorization: Bearer <access_token>``; also set as the session cookie.
    access_token: str
    token_type: str = "bearer"
    expires_at: datetime
    csrf_token: str


class VerificationSent(BaseModel):
    """The account must be verified before it can sign in: a link is on its way to
    ``email`` (an address that already had an account gets a mail saying so instead)."""

    email: str
    verification_required: Literal[True] = True


class Providers(BaseModel):
    password: bool = True
    google: bool
    #: Whether a new password account must follow a mailed link before signing in.
    email_verification_required: bool


# --------------------------------------------------------------------------- helpers
def client_address(request: Request) -> str:
    """The connection's address, or the forwarded one behind a proxy listed in
    ``INFLAB_FORWARDED_ALLOW_IPS`` (uvicorn's ProxyHeadersMiddleware, installed by the app,
    rewrites it)."""
    return request.client.host if request.client else "unknown"


def field_error(status_code: int, field: str, message: str, kind: str) -> HTTPException:
    """An error naming the body field at fault, shaped like FastAPI's own 422s."""
    return HTTPException(status_code, [{"loc": ["body", field], "msg": message, "type": kind}])


def too_many(exc: RateLimited) -> HTTPException:
    return HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, str(exc),
                         headers={"Retry-After": str(exc.retry_after_s)})


def check_new_password(password: str, email: str, settings: Settings, field: str) -> None:
    problems = password_problems(password, email, settings)
    if problems:
        raise field_error(status.HTTP_422_UNPROCESSABLE_CONTENT, field, "the password needs " + ", ".join(problems),
                          "weak_password")


async def user_out(session: AsyncSession, user: User, csrf_token: str | None = None) -> UserOut:
    return UserOut(id=user.id, email=user.email, display_name=user.display_name, theme=user.theme,
                   email_verified=user.email_verified_at is not None, created_at=user.created_at,
                   sign_in_methods=await sign_in_methods(session, user), csrf_token=csrf_token)


async def signed_in(session: AsyncSession, response: Response, settings: Settings, user: User) -> SignedIn:
    """Start a session for ``user``, set its cookies on ``response``; the answer."""
    token, row = await start_session(session, user, settings)
    set_session_cookies(response, settings, token, row.csrf_token)
    return SignedIn(user=await user_out(session, user, row.csrf_token), access_token=token,
                    expires_at=row.expires_at, csrf_token=row.csrf_token)


# --------------------------------------------------------------------------- routes
@router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    responses={
        202: {"model": VerificationSent,
              "description": "Verification is required: a link was mailed; sign in after following it."},
        409: {"description": "An account with this email exists (only when verification is not required)."},
        422: {"description": "Not an email address (`email`), or a password that breaks the rules (`password`)."},
        **TOO_MANY, **BUSY,
    },
)
async def register_account(
    body: Registration,
    request: Request,
    response: Response,
    background: BackgroundTasks,
    session: SystemSessionDep,
    settings: SettingsDep,
    hasher: HasherDep,
    throttle: ThrottleDep,
    rules: RulesDep,
    mailer: MailerDep,
) -> SignedIn:
    """Create a password account. With ``INFLAB_REQUIRE_EMAIL_VERIFICATION`` (the default
    outside the embedded stack) the answer is 202 and the account signs in once the link
    mailed to it has been followed (``POST /api/auth/verify-email``); otherwise it is
    signed in at once (201) and the link, when followed, only marks it verified."""
    try:
        await throttle.attempt([(rules.register, client_address(request))])
    except RateLimited as exc:
        raise too_many(exc) from None
    email = normalize_email(body.email)
    if email is None:
        raise field_error(status.HTTP_422_UNPROCESSABLE_CONTENT, "email", "not an email address", "value_error")
    check_new_password(body.password, email, settings, "password")
    # Hashed whether or not the address is taken, so the time taken does not tell.
    password_hash = await hasher.hash(body.password)
    user = await create_account(session, email, password_hash, body.display_name)
    sent = JSONResponse(VerificationSent(email=email).model_dump(), status_code=status.HTTP_202_ACCEPTED)
    if user is None:
        if not settings.require_email_verification:
            raise HTTPException(status.HTTP_409_CONFLICT, "an account with this email exists; sign in")
        existing = await find_by_email(session, email)
        try:  # whoever keeps registering someone's address must not flood their inbox
            await throttle.attempt([(rules.mail, email)])
        except RateLimited:
            return sent
        if existing is not None and existing.email_verified_at is None and existing.password_hash:
            background.add_task(mailer.send, mails.verification(
                email, await links.issue(session, existing, "verify_email", settings), settings))
        else:
            background.add_task(mailer.send, mails.already_registered(email, settings))
        return sent
    background.add_task(mailer.send, mails.verification(
        email, await links.issue(session, user, "verify_email", settings), settings))
    if settings.require_email_verification:
        return sent
    return await signed_in(session, response, settings, user)


@router.post(
    "/login",
    responses={401: {"description": "Wrong email or password."},
               403: {"description": "The email address is not verified yet."}, **TOO_MANY, **BUSY},
)
async def login(
    body: Credentials,
    request: Request,
    response: Response,
    session: SystemSessionDep,
    settings: SettingsDep,
    hasher: HasherDep,
    throttle: ThrottleDep,
    rules: RulesDep,
) -> SignedIn:
    """Sign in with email and password. Each attempt is counted before the password is
    checked; past ``login_max_failures`` attempts for one email from one client address
    (or ``login_max_per_address`` from one address) within ``login_window_s``, attempts
    get 429 for a growing back-off, right password or not."""
    email = normalize_email(body.email) or body.email.strip().lower()
    address = client_address(request)
    pair = f"{email}|{address}"
    try:
        await throttle.attempt([(rules.login, pair), (rules.login_address, address)])
    except RateLimited as exc:
        raise too_many(exc) from None
    user = await authenticate(session, hasher, email, body.password)
    if user is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong email or password")
    await throttle.forgive(rules.login, pair)
    await throttle.forgive(rules.login_address, address, whole=False)
    if settings.require_email_verification and user.email_verified_at is None:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "verify your email address first: follow the link we mailed to it "
            "(a new link can be requested with POST /api/auth/verify-email/resend)",
        )
    return await signed_in(session, response, settings, user)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(caller: CallerDep, session: SystemSessionDep, settings: SettingsDep) -> Response:
    """End this session (cookie or access token) and clear the cookies. An API token is
    revoked through ``DELETE /api/tokens/{id}`` instead."""
    if caller.session_id is not None:
        await end_session(session, caller.session_id)
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    clear_session_cookies(response, settings)
    return response


@router.post("/logout-all", status_code=status.HTTP_204_NO_CONTENT,
             responses={403: {"description": "Called with an API token."}})
async def logout_everywhere(caller: SessionCallerDep, session: SystemSessionDep, settings: SettingsDep) -> Response:
    """Sign out everywhere: end every session of the account, this one too, and clear the
    cookies. API tokens stay (revoke them in ``/api/tokens``)."""
    await end_sessions(session, caller.user.id)
    await session.commit()
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    clear_session_cookies(response, settings)
    return response


@router.get("/providers")
async def sign_in_providers(settings: SettingsDep) -> Providers:
    """Which sign-in methods this gateway offers (for the sign-in page)."""
    return Providers(google=google_enabled(settings),
                     email_verification_required=settings.require_email_verification)


@router.get(
    "/google/login",
    response_class=RedirectResponse,
    status_code=status.HTTP_302_FOUND,
    responses={404: {"description": "Google sign-in is not configured."}},
)
async def google_login(request: Request, settings: SettingsDep) -> Response:
    """Redirect the browser to Google; it comes back to ``google_callback``."""
    if not google_enabled(settings):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "Google sign-in is not configured")
    client = request.app.state.oauth.create_client(GOOGLE)
    return await client.authorize_redirect(request, str(request.url_for("google_callback")))


@router.get(
    "/google/callback",
    response_class=RedirectResponse,
    status_code=status.HTTP_302_FOUND,
    responses={400: {"description": "The sign-in failed or was refused."},
               404: {"description": "Google sign-in is not configured."}},
)
async def google_callback(request: Request, session: SystemSessionDep, settings: SettingsDep) -> Response:
    """Google's answer: the verified email signs in to its account (linking Google to an
    existing account with that email, or creating one), then back to the app. An account
    whose own address was never verified loses its password, sessions and API tokens as
    Google is linked to it (see ``accounts.user_for_identity``)."""
    if not google_enabled(settings):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "Google sign-in is not configured")
    client = request.app.state.oauth.create_client(GOOGLE)
    try:
        token = await client.authorize_access_token(request)
    except OAuthError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"Google sign-in failed: {exc.error}") from None
    claims = token.get("userinfo") or {}
    email = normalize_email(str(claims.get("email", "")))
    if not claims.get("sub") or email is None:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "Google did not say who signed in")
    if claims.get("email_verified") is not True:
        # An unverified address proves nothing: linking on it would hand its account over.
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "the Google account's email is not verified")
    user = await user_for_identity(session, GOOGLE, str(claims["sub"]), email)
    response = RedirectResponse(settings.post_login_redirect, status_code=status.HTTP_302_FOUND)
    token_value, row = await start_session(session, user, settings)
    set_session_cookies(response, settings, token_value, row.csrf_token)
    return response

"""Accounts and sign-in: register, sign in and out with email and password, Google
sign-in, and who the caller is. Signing in answers with a bearer access token (for API
clients) and sets the browser's session and CSRF cookies."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

from authlib.integrations.base_client import OAuthError
from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from inflab.common.db.models import AuthSession, Identity, User
from inflab.gateway.auth.accounts import (
    EmailTaken,
    authenticate,
    end_session,
    normalize_email,
    register,
    start_session,
    user_for_identity,
)
from inflab.gateway.auth.google import PROVIDER as GOOGLE
from inflab.gateway.auth.google import google_enabled
from inflab.gateway.auth.passwords import password_problems
from inflab.gateway.auth.ratelimit import RateLimited
from inflab.gateway.deps import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    CallerDep,
    SessionDep,
    SettingsDep,
    SystemSessionDep,
)

router = APIRouter(prefix="/api/auth", tags=["auth"])

TOO_MANY = {429: {"description": "Too many attempts: wait for the Retry-After seconds."}}


class Credentials(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: Annotated[str, Field(min_length=3, max_length=320)]
    password: Annotated[str, Field(min_length=1, max_length=4096)]


class UserOut(BaseModel):
    id: UUID
    email: str
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


class Providers(BaseModel):
    password: bool = True
    google: bool


def _client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def _user_out(session, user: User, csrf_token: str | None = None) -> UserOut:
    providers = list(await session.scalars(select(Identity.provider).where(Identity.user_id == user.id).distinct()))
    methods = (["password"] if user.password_hash else []) + sorted(providers)
    return UserOut(id=user.id, email=user.email, created_at=user.created_at, sign_in_methods=methods,
                   csrf_token=csrf_token)


def _secure(request: Request, settings) -> bool:
    return settings.cookie_secure if settings.cookie_secure is not None else request.url.scheme == "https"


def _set_session_cookies(response: Response, request: Request, settings, token: str, row: AuthSession) -> None:
    secure = _secure(request, settings)
    max_age = int(settings.session_ttl_s)
    response.set_cookie(SESSION_COOKIE, token, max_age=max_age, httponly=True, secure=secure, samesite="lax",
                        path="/")
    # Readable by the page's script, which echoes it in X-CSRF-Token.
    response.set_cookie(CSRF_COOKIE, row.csrf_token, max_age=max_age, httponly=False, secure=secure,
                        samesite="lax", path="/")


def _too_many(exc: RateLimited) -> HTTPException:
    return HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, str(exc),
                         headers={"Retry-After": str(int(exc.retry_after_s))})


async def _signed_in(session, request: Request, response: Response, settings, user: User) -> SignedIn:
    token, row = await start_session(session, user, settings.session_ttl_s)
    _set_session_cookies(response, request, settings, token, row)
    return SignedIn(user=await _user_out(session, user, row.csrf_token), access_token=token,
                    expires_at=row.expires_at, csrf_token=row.csrf_token)


@router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    responses={**TOO_MANY, 409: {"description": "An account with this email exists."},
               422: {"description": "Not an email address, or a password that breaks the rules."}},
)
async def register_account(
    body: Credentials, request: Request, response: Response, session: SystemSessionDep, settings: SettingsDep
) -> SignedIn:
    """Create an account with email and password, and sign in to it."""
    limiter = request.app.state.register_limiter
    try:
        limiter.check(_client_address(request))
    except RateLimited as exc:
        raise _too_many(exc) from None
    limiter.hit(_client_address(request))
    email = normalize_email(body.email)
    if email is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "not an email address")
    problems = password_problems(body.password, email, settings)
    if problems:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "the password needs " + ", ".join(problems))
    try:
        user = await register(session, email, body.password)
    except EmailTaken:
        raise HTTPException(status.HTTP_409_CONFLICT, "an account with this email exists; sign in") from None
    return await _signed_in(session, request, response, settings, user)


@router.post("/login", responses={**TOO_MANY, 401: {"description": "Wrong email or password."}})
async def login(
    body: Credentials, request: Request, response: Response, session: SystemSessionDep, settings: SettingsDep
) -> SignedIn:
    """Sign in with email and password. After ``login_max_failures`` failures for one
    account or client address within ``login_window_s``, attempts get 429 until the
    window has passed, right password or not."""
    email = normalize_email(body.email) or body.email.strip().lower()
    keys = (f"email:{email}", f"address:{_client_address(request)}")
    limiter = request.app.state.login_limiter
    try:
        limiter.check(*keys)
    except RateLimited as exc:
        raise _too_many(exc) from None
    user = await authenticate(session, email, body.password)
    if user is None:
        limiter.hit(*keys)
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong email or password")
    limiter.reset(keys[0])
    return await _signed_in(session, request, response, settings, user)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(caller: CallerDep, session: SystemSessionDep) -> Response:
    """End this session (cookie or access token) and clear the cookies. An API token is
    revoked through ``DELETE /api/tokens/{id}`` instead."""
    if caller.session_id is not None:
        await end_session(session, caller.session_id)
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.delete_cookie(CSRF_COOKIE, path="/")
    return response


@router.get("/me")
async def me(caller: CallerDep, session: SessionDep) -> UserOut:
    return await _user_out(session, caller.user, caller.csrf_token if caller.via == "cookie" else None)


@router.get("/providers")
async def sign_in_providers(settings: SettingsDep) -> Providers:
    """Which sign-in methods this gateway offers (for the sign-in page)."""
    return Providers(google=google_enabled(settings))


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
    existing account with that email, or creating one), then back to the app."""
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
    token_value, row = await start_session(session, user, settings.session_ttl_s)
    _set_session_cookies(response, request, settings, token_value, row)
    return response

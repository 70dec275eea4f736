"""Accounts and sign-in against the real gateway and Postgres: register, login, logout,
me; password rules; session cookies and CSRF; bearer access tokens; personal API tokens;
rate limits."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from sqlalchemy import select, update

from inflab.common.db.models import ApiToken, AuthSession, User
from inflab.common.settings import Settings
from inflab.gateway.auth.tokens import token_hash
from inflab.gateway.testing import TEST_PASSWORD, delete_streams, gateway_in_process, isolated_settings, sign_up

pytestmark = pytest.mark.integration

EXPERIMENT = {
    "name": "auth",
    "training_data": [{"question": "What do bees make?", "answer": "Honey."}],
    "eval_data": [{"question": "What do bees make?"}],
}


@pytest.fixture(scope="module")
def auth_settings(settings: Settings) -> Iterator[Settings]:
    own = isolated_settings(settings, "auth").model_copy(
        update={"login_max_failures": 3, "register_max_per_window": 50}
    )
    yield own
    asyncio.run(delete_streams(own))


@pytest.fixture
async def gateway(auth_settings):
    async with gateway_in_process(auth_settings, signed_in=False) as (app, client):
        yield app, client


def email() -> str:
    return f"{uuid.uuid4().hex[:12]}@example.org"


async def test_register_login_me_logout_with_a_bearer_token(gateway) -> None:
    app, client = gateway
    address = email()
    assert (await client.get("/api/auth/me")).status_code == 401
    registered = await client.post("/api/auth/register", json={"email": address.upper(), "password": TEST_PASSWORD})
    assert registered.status_code == 201, registered.text
    body = registered.json()
    assert body["user"]["email"] == address  # stored lower-cased
    assert body["user"]["sign_in_methods"] == ["password"]
    assert body["token_type"] == "bearer" and body["access_token"].startswith("ils_")

    async with app.state.sessionmaker() as session:
        user = await session.scalar(select(User).where(User.email == address))
        assert user.password_hash.startswith("$argon2id$")
        stored = await session.scalar(select(AuthSession.token_hash).where(AuthSession.user_id == user.id))
        assert stored != body["access_token"] and len(stored) == 64  # only the hash is kept

    again = await client.post("/api/auth/register", json={"email": address, "password": TEST_PASSWORD})
    assert again.status_code == 409
    wrong = await client.post("/api/auth/login", json={"email": address, "password": TEST_PASSWORD + "x"})
    assert wrong.status_code == 401

    client.cookies.clear()
    logged_in = await client.post("/api/auth/login", json={"email": address, "password": TEST_PASSWORD})
    assert logged_in.status_code == 200
    client.cookies.clear()  # the bearer token alone from here on
    bearer = {"Authorization": f"Bearer {logged_in.json()['access_token']}"}
    me = await client.get("/api/auth/me", headers=bearer)
    assert me.status_code == 200 and me.json()["id"] == str(user.id) and me.json()["csrf_token"] is None
    # A bearer token needs no CSRF header: no browser sends it on its own.
    assert (await client.post("/api/experiments", json=EXPERIMENT, headers=bearer)).status_code == 201

    assert (await client.post("/api/auth/logout", headers=bearer)).status_code == 204
    assert (await client.get("/api/auth/me", headers=bearer)).status_code == 401
    # The first token still works: logging out ends one session.
    assert (await client.get("/api/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"})).status_code == 200
    for broken in ("Bearer nonsense", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer ils_" + "a" * 43):
        assert (await client.get("/api/auth/me", headers={"Authorization": broken})).status_code == 401


@pytest.mark.parametrize(
    "password, problem",
    [("short1!", "at least 10 characters"), ("aaaaaaaaaaaa", "4 different characters"), (None, "not your email")],
)
async def test_passwords_that_break_the_rules_are_refused(gateway, password, problem) -> None:
    _, client = gateway
    address = email()
    response = await client.post("/api/auth/register", json={"email": address, "password": password or address})
    assert response.status_code == 422 and problem in response.text
    bad_email = await client.post("/api/auth/register", json={"email": "not an email", "password": TEST_PASSWORD})
    assert bad_email.status_code == 422


async def test_browser_session_cookie_needs_the_csrf_header_to_change_anything(auth_settings) -> None:
    # https: the cookie must then be Secure.
    async with gateway_in_process(auth_settings, signed_in=False) as (app, _):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://gateway") as browser:
            signed_in = (await browser.post("/api/auth/register", json={"email": email(), "password": TEST_PASSWORD}))
            cookies = signed_in.headers.get_list("set-cookie")
            session_cookie = next(c for c in cookies if c.startswith("inflab_session="))
            csrf_cookie = next(c for c in cookies if c.startswith("inflab_csrf="))
            assert "HttpOnly" in session_cookie and "Secure" in session_cookie and "SameSite=lax" in session_cookie
            assert "HttpOnly" not in csrf_cookie  # the page's script reads it
            csrf = signed_in.json()["csrf_token"]
            assert browser.cookies["inflab_csrf"] == csrf

            me = await browser.get("/api/auth/me")  # reading needs no CSRF header
            assert me.status_code == 200 and me.json()["csrf_token"] == csrf
            forged = await browser.post("/api/experiments", json=EXPERIMENT)
            assert forged.status_code == 403
            wrong = await browser.post("/api/experiments", json=EXPERIMENT, headers={"X-CSRF-Token": "guess"})
            assert wrong.status_code == 403
            ok = await browser.post("/api/experiments", json=EXPERIMENT, headers={"X-CSRF-Token": csrf})
            assert ok.status_code == 201, ok.text

            assert (await browser.post("/api/auth/logout")).status_code == 403  # logout changes state too
            out = await browser.post("/api/auth/logout", headers={"X-CSRF-Token": csrf})
            assert out.status_code == 204
            assert "inflab_session" not in browser.cookies
            assert (await browser.get("/api/experiments")).status_code == 401

        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as plain:
            answer = await plain.post("/api/auth/register", json={"email": email(), "password": TEST_PASSWORD})
            session_cookie = next(c for c in answer.headers.get_list("set-cookie") if c.startswith("inflab_session="))
            assert "Secure" not in session_cookie  # a cookie marked Secure would never come back over http


async def test_personal_api_tokens_create_list_use_revoke(gateway) -> None:
    app, client = gateway
    await sign_up(client, email())
    created = await client.post("/api/tokens", json={"name": "nightly pipeline"})
    assert created.status_code == 201, created.text
    token = created.json()["token"]
    assert token.startswith("ilp_") and created.json()["prefix"] == token[:12]
    async with app.state.sessionmaker() as session:
        row = await session.get(ApiToken, uuid.UUID(created.json()["id"]))
        assert row.token_hash != token and token not in row.token_hash

    listed = (await client.get("/api/tokens")).json()
    assert [t["name"] for t in listed] == ["nightly pipeline"] and "token" not in listed[0]

    pipeline = {"Authorization": f"Bearer {token}"}
    assert (await client.post("/api/experiments", json=EXPERIMENT, headers=pipeline)).status_code == 201
    assert (await client.get("/api/tokens")).json()[0]["last_used_at"] is not None
    # A leaked API token cannot mint or revoke others.
    assert (await client.post("/api/tokens", json={"name": "more"}, headers=pipeline)).status_code == 403

    other = httpx.AsyncClient(transport=client._transport, base_url="http://gateway")
    async with other:
        await sign_up(other, email())
        assert (await other.get("/api/tokens")).json() == []
        assert (await other.delete(f"/api/tokens/{created.json()['id']}")).status_code == 404

    assert (await client.delete(f"/api/tokens/{created.json()['id']}")).status_code == 204
    assert (await client.delete(f"/api/tokens/{created.json()['id']}")).status_code == 204
    assert (await client.delete("/api/tokens/not-a-uuid")).status_code == 404
    assert (await client.get("/api/experiments", headers=pipeline)).status_code == 401
    assert (await client.get("/api/tokens")).json()[0]["revoked_at"] is not None


async def test_login_is_locked_out_after_repeated_failures(gateway, auth_settings) -> None:
    _, client = gateway
    address = email()
    await client.post("/api/auth/register", json={"email": address, "password": TEST_PASSWORD})
    for _ in range(auth_settings.login_max_failures):
        wrong = await client.post("/api/auth/login", json={"email": address, "password": "wrong password!"})
        assert wrong.status_code == 401
    locked = await client.post("/api/auth/login", json={"email": address, "password": TEST_PASSWORD})
    assert locked.status_code == 429  # even the right password, until the window passes
    assert int(locked.headers["Retry-After"]) >= 1


async def test_registration_is_rate_limited_per_client_address(auth_settings) -> None:
    strict = auth_settings.model_copy(update={"register_max_per_window": 2})
    async with gateway_in_process(strict, signed_in=False) as (_, client):
        for _ in range(2):
            assert (await client.post("/api/auth/register", json={"email": email(), "password": TEST_PASSWORD})).status_code == 201
        limited = await client.post("/api/auth/register", json={"email": email(), "password": TEST_PASSWORD})
        assert limited.status_code == 429 and "Retry-After" in limited.headers


async def test_the_python_client_signs_in_registering_the_account_first(auth_settings) -> None:
    """What `inflab demo` does against the real gateway: register on first use, log in after."""
    from inflab.common.client import GatewayClient, GatewayError
    from inflab.gateway.testing import gateway_server

    address = email()
    async with gateway_server(auth_settings) as (_, base_url):
        for _ in range(2):  # registers, then logs in to the same account
            async with GatewayClient(base_url) as client:
                signed_in = await client.sign_in(address, TEST_PASSWORD)
                assert signed_in["user"]["email"] == address
                assert await client.create_experiment(EXPERIMENT)
        async with GatewayClient(base_url) as client:
            with pytest.raises(GatewayError, match="exists with another password"):
                await client.sign_in(address, "another password 99")


async def test_an_expired_session_is_refused_and_cleared_at_the_next_sign_in(gateway) -> None:
    app, client = gateway
    address = email()
    first = (await client.post("/api/auth/register", json={"email": address, "password": TEST_PASSWORD})).json()
    client.cookies.clear()
    bearer = {"Authorization": f"Bearer {first['access_token']}"}
    async with app.state.sessionmaker() as session:
        await session.execute(
            update(AuthSession).where(AuthSession.token_hash == token_hash(first["access_token"]))
            .values(expires_at=datetime.now(timezone.utc) - timedelta(seconds=1))
        )
        await session.commit()
    assert (await client.get("/api/auth/me", headers=bearer)).status_code == 401
    await client.post("/api/auth/login", json={"email": address, "password": TEST_PASSWORD})
    async with app.state.sessionmaker() as session:
        hashes = set(await session.scalars(
            select(AuthSession.token_hash).where(AuthSession.user_id == uuid.UUID(first["user"]["id"]))
        ))
    assert token_hash(first["access_token"]) not in hashes and len(hashes) == 1

"""Accounts and sign-in against the real gateway and Postgres: register, login, logout (here
and everywhere), me and preferences; password rules, change and re-hash; session cookies
(``__Host-`` and Secure), CSRF and idle timeout; bearer access tokens; personal API
tokens; rate limits shared through Postgres, the trusted-proxy client address.

Mailed links (verification, password reset) are in test_gateway_verification.py, token
scopes in test_gateway_token_scopes.py, the denial-of-service limits in
test_gateway_limits.py."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from sqlalchemy import select, update

from argon2 import PasswordHasher as Argon2

from inflab.core.db.models import ApiToken, AuthSession, User
from inflab.core.settings import Settings
from inflab.gateway.auth.tokens import token_hash
from helpers.gateway import TEST_PASSWORD, delete_streams, gateway_in_process, isolated_settings, sign_up

pytestmark = pytest.mark.integration

EXPERIMENT = {
    "name": "auth",
    "training_data": [{"question": "What do bees make?", "answer": "Honey."}],
    "eval_data": [{"question": "What do bees make?"}],
}


@pytest.fixture(scope="module")
def auth_settings(settings: Settings) -> Iterator[Settings]:
    own = isolated_settings(settings, "auth").model_copy(update={"login_max_failures": 3})
    yield own
    asyncio.run(delete_streams(own))


@pytest.fixture
async def gateway(auth_settings):
    async with gateway_in_process(auth_settings, signed_in=False) as (app, client):
        yield app, client


def email() -> str:
    return f"{uuid.uuid4().hex[:12]}@example.org"


def documentation_address() -> str:
    """A client address of its own (TEST-NET-3), so shared per-address counters start at 0."""
    n = uuid.uuid4().int
    return f"203.0.{n % 250}.{(n >> 8) % 250 + 1}"


def client_from(app, address: str, base_url: str = "http://gateway") -> httpx.AsyncClient:
    """A client whose connection comes from ``address``."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(address, 40000)), base_url=base_url)


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
    assert response.json()["detail"][0]["loc"] == ["body", "password"]
    bad_email = await client.post("/api/auth/register", json={"email": "not an email", "password": TEST_PASSWORD})
    assert bad_email.status_code == 422 and bad_email.json()["detail"][0]["loc"] == ["body", "email"]


async def test_browser_session_cookie_needs_the_csrf_header_to_change_anything(auth_settings) -> None:
    # The production default: a Secure cookie with the __Host- prefix (so, over https).
    async with gateway_in_process(auth_settings, signed_in=False) as (app, _):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://gateway") as browser:
            signed_in = (await browser.post("/api/auth/register", json={"email": email(), "password": TEST_PASSWORD}))
            cookies = signed_in.headers.get_list("set-cookie")
            session_cookie = next(c for c in cookies if c.startswith("__Host-inflab_session="))
            csrf_cookie = next(c for c in cookies if c.startswith("__Host-inflab_csrf="))
            for flag in ("HttpOnly", "Secure", "SameSite=lax", "Path=/"):
                assert flag in session_cookie, session_cookie
            assert "Domain" not in session_cookie  # what the __Host- prefix requires
            assert "HttpOnly" not in csrf_cookie  # the page's script may read it
            csrf = signed_in.json()["csrf_token"]
            assert browser.cookies["__Host-inflab_csrf"] == csrf

            me = await browser.get("/api/auth/me")  # reading needs no CSRF header
            assert me.status_code == 200 and me.json()["csrf_token"] == csrf
            forged = await browser.post("/api/experiments", json=EXPERIMENT)
            assert forged.status_code == 403
            wrong = await browser.post("/api/experiments", json=EXPERIMENT, headers={"X-CSRF-Token": "guess"})
            assert wrong.status_code == 403
            ok = await browser.post("/api/experiments", json=EXPERIMENT, headers={"X-CSRF-Token": csrf})
            assert ok.status_code == 201, ok.text

            # An unprefixed cookie with the same value is not read: only the __Host- one is.
            token = browser.cookies["__Host-inflab_session"]
            async with httpx.AsyncClient(transport=transport, base_url="https://gateway",
                                         cookies={"inflab_session": token}) as tossed:
                assert (await tossed.get("/api/auth/me")).status_code == 401

            assert (await browser.post("/api/auth/logout")).status_code == 403  # logout changes state too
            out = await browser.post("/api/auth/logout", headers={"X-CSRF-Token": csrf})
            assert out.status_code == 204
            assert "__Host-inflab_session" not in browser.cookies
            assert (await browser.get("/api/experiments")).status_code == 401


async def test_the_embedded_stacks_plain_http_cookie(auth_settings) -> None:
    plain = auth_settings.model_copy(update={"cookie_secure": False})
    async with gateway_in_process(plain, signed_in=False) as (_, client):
        answer = await client.post("/api/auth/register", json={"email": email(), "password": TEST_PASSWORD})
        session_cookie = next(c for c in answer.headers.get_list("set-cookie") if c.startswith("inflab_session="))
        assert "Secure" not in session_cookie  # a Secure cookie would never come back over http
        client.headers.pop("Authorization", None)
        me = await client.get("/api/auth/me")
        assert me.status_code == 200 and me.json()["csrf_token"] == answer.json()["csrf_token"]


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

    assert created.json()["scope"] == "full" and created.json()["expires_at"] is None
    listed = (await client.get("/api/tokens")).json()
    assert [t["name"] for t in listed] == ["nightly pipeline"] and "token" not in listed[0]
    assert set(listed[0]) == {"id", "name", "prefix", "scope", "created_at", "expires_at", "last_used_at",
                              "revoked_at"}

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


async def test_repeated_failures_back_off_for_that_email_and_address_only(gateway, auth_settings) -> None:
    app, _ = gateway
    address, elsewhere = documentation_address(), documentation_address()
    account = email()
    async with client_from(app, address) as attacker, client_from(app, elsewhere) as owner:
        assert (await attacker.post("/api/auth/register", json={"email": account, "password": TEST_PASSWORD})).status_code == 201
        for _ in range(auth_settings.login_max_failures):
            wrong = await attacker.post("/api/auth/login", json={"email": account, "password": "wrong password!"})
            assert wrong.status_code == 401
        locked = await attacker.post("/api/auth/login", json={"email": account, "password": TEST_PASSWORD})
        assert locked.status_code == 429  # even the right password, during the back-off
        assert int(locked.headers["Retry-After"]) >= 1
        # No hard lock: the owner, signing in from elsewhere, is not shut out.
        assert (await owner.post("/api/auth/login", json={"email": account, "password": TEST_PASSWORD})).status_code == 200


async def test_the_back_off_ends_and_doubles_at_the_next_excess(auth_settings) -> None:
    quick = auth_settings.model_copy(update={"login_max_failures": 1, "login_backoff_s": 1.0})
    async with gateway_in_process(quick, signed_in=False) as (app, _):
        account = email()
        async with client_from(app, documentation_address()) as client:
            await client.post("/api/auth/register", json={"email": account, "password": TEST_PASSWORD})
            wrong = {"email": account, "password": "wrong password!"}
            assert (await client.post("/api/auth/login", json=wrong)).status_code == 401
            first = await client.post("/api/auth/login", json=wrong)
            assert first.status_code == 429 and first.headers["Retry-After"] == "1"
            # The back-off is a time to wait, so this test waits it out.
            await asyncio.sleep(1.1)
            assert (await client.post("/api/auth/login", json=wrong)).status_code == 401
            second = await client.post("/api/auth/login", json=wrong)
            assert second.status_code == 429 and second.headers["Retry-After"] == "2"


async def test_registration_is_rate_limited_per_client_address(auth_settings) -> None:
    strict = auth_settings.model_copy(update={"register_max_per_window": 2})
    async with gateway_in_process(strict, signed_in=False) as (app, _):
        async with client_from(app, documentation_address()) as client:
            for _ in range(2):
                assert (await client.post("/api/auth/register", json={"email": email(), "password": TEST_PASSWORD})).status_code == 201
            limited = await client.post("/api/auth/register", json={"email": email(), "password": TEST_PASSWORD})
            assert limited.status_code == 429 and "Retry-After" in limited.headers
        async with client_from(app, documentation_address()) as neighbour:  # another address is not limited
            assert (await neighbour.post("/api/auth/register", json={"email": email(), "password": TEST_PASSWORD})).status_code == 201


async def test_the_client_address_comes_from_x_forwarded_for_only_behind_a_listed_proxy(auth_settings) -> None:
    strict = auth_settings.model_copy(update={"register_max_per_window": 1})
    proxy = documentation_address()
    behind = strict.model_copy(update={"forwarded_allow_ips": f"{proxy},10.0.0.0/8"})

    async def registers(app, via: str, forwarded: str) -> int:
        async with client_from(app, via) as client:
            answer = await client.post("/api/auth/register", json={"email": email(), "password": TEST_PASSWORD},
                                       headers={"X-Forwarded-For": forwarded})
            return answer.status_code

    async with gateway_in_process(behind, signed_in=False) as (app, _):
        # Two clients behind the proxy count apart; a spoofed header from elsewhere is ignored.
        assert await registers(app, proxy, documentation_address()) == 201
        assert await registers(app, proxy, documentation_address()) == 201
        direct = documentation_address()
        assert await registers(app, direct, documentation_address()) == 201
        assert await registers(app, direct, documentation_address()) == 429
    async with gateway_in_process(strict, signed_in=False) as (app, _):
        # No proxy listed: the header is never believed.
        assert await registers(app, proxy, documentation_address()) == 201
        assert await registers(app, proxy, documentation_address()) == 429


async def test_the_python_client_signs_in_registering_the_account_first(auth_settings) -> None:
    """What `inflab demo` does against the real gateway: register on first use, log in after."""
    from inflab.devtools.client import GatewayClient, GatewayError
    from helpers.gateway import gateway_server

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


async def test_an_idle_session_ends_and_last_seen_is_written_at_most_once_a_minute(gateway, auth_settings) -> None:
    app, client = gateway
    signed_in = await sign_up(client, email())
    digest = token_hash(signed_in["access_token"])

    async def last_seen() -> datetime:
        async with app.state.sessionmaker() as session:
            return await session.scalar(select(AuthSession.last_seen_at).where(AuthSession.token_hash == digest))

    async def set_last_seen(ago: timedelta) -> None:
        async with app.state.sessionmaker() as session:
            await session.execute(update(AuthSession).where(AuthSession.token_hash == digest)
                                  .values(last_seen_at=datetime.now(timezone.utc) - ago))
            await session.commit()

    first = await last_seen()
    assert (await client.get("/api/auth/me")).status_code == 200
    assert await last_seen() == first  # used again within the minute: not written
    await set_last_seen(timedelta(minutes=2))
    before = await last_seen()
    assert (await client.get("/api/auth/me")).status_code == 200
    assert await last_seen() > before  # a minute on: written
    await set_last_seen(timedelta(seconds=auth_settings.session_idle_timeout_s + 1))
    assert (await client.get("/api/auth/me")).status_code == 401  # idle too long: ended


async def test_a_hash_made_with_older_argon2_parameters_is_replaced_at_sign_in(gateway) -> None:
    app, client = gateway
    account = email()
    await client.post("/api/auth/register", json={"email": account, "password": TEST_PASSWORD})
    weaker = Argon2(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash(TEST_PASSWORD)
    async with app.state.sessionmaker() as session:
        await session.execute(update(User).where(User.email == account).values(password_hash=weaker))
        await session.commit()
    assert (await client.post("/api/auth/login", json={"email": account, "password": TEST_PASSWORD})).status_code == 200
    async with app.state.sessionmaker() as session:
        stored = await session.scalar(select(User.password_hash).where(User.email == account))
    assert stored != weaker and not Argon2().check_needs_rehash(stored)  # today's parameters
    assert (await client.post("/api/auth/login", json={"email": account, "password": TEST_PASSWORD})).status_code == 200


async def test_sign_out_everywhere_ends_every_session_and_clears_the_cookies(gateway) -> None:
    app, client = gateway
    account = email()
    first = await sign_up(client, account)
    second = (await client.post("/api/auth/login", json={"email": account, "password": TEST_PASSWORD})).json()
    token = (await client.post("/api/tokens", json={"name": "kept"})).json()["token"]
    pipeline = {"Authorization": f"Bearer {token}"}
    assert (await client.post("/api/auth/logout-all", headers=pipeline)).status_code == 403  # not with an API token

    out = await client.post("/api/auth/logout-all", headers={"Authorization": f"Bearer {second['access_token']}"})
    assert out.status_code == 204
    cleared = [c for c in out.headers.get_list("set-cookie") if c.startswith("__Host-inflab_session=")]
    assert cleared and ("Max-Age=0" in cleared[0] or "expires=" in cleared[0].lower())
    for signed_in in (first, second):
        bearer = {"Authorization": f"Bearer {signed_in['access_token']}"}
        assert (await client.get("/api/auth/me", headers=bearer)).status_code == 401
    assert (await client.get("/api/experiments", headers=pipeline)).status_code == 200  # API tokens stay


async def test_changing_the_password_keeps_this_session_and_ends_the_others(gateway) -> None:
    app, client = gateway
    account = email()
    this = await sign_up(client, account)
    other = (await client.post("/api/auth/login", json={"email": account, "password": TEST_PASSWORD})).json()
    new_password = "another long password 42"

    wrong = await client.post("/api/auth/password", json={"current_password": "not it at all", "new_password": new_password})
    assert wrong.status_code == 400 and wrong.json()["detail"][0]["loc"] == ["body", "current_password"]
    weak = await client.post("/api/auth/password", json={"current_password": TEST_PASSWORD, "new_password": "short"})
    assert weak.status_code == 422 and weak.json()["detail"][0]["loc"] == ["body", "new_password"]

    changed = await client.post("/api/auth/password", json={"current_password": TEST_PASSWORD, "new_password": new_password})
    assert changed.status_code == 204, changed.text
    assert (await client.get("/api/auth/me")).json()["id"] == this["user"]["id"]  # this session stays
    other_bearer = {"Authorization": f"Bearer {other['access_token']}"}
    assert (await client.get("/api/auth/me", headers=other_bearer)).status_code == 401
    old = await client.post("/api/auth/login", json={"email": account, "password": TEST_PASSWORD})
    assert old.status_code == 401
    assert (await client.post("/api/auth/login", json={"email": account, "password": new_password})).status_code == 200


async def test_preferences_display_name_and_theme(gateway) -> None:
    app, client = gateway
    registered = await client.post("/api/auth/register",
                                   json={"email": email(), "password": TEST_PASSWORD, "display_name": "  Ada   L. "})
    client.headers["Authorization"] = f"Bearer {registered.json()['access_token']}"
    me = (await client.get("/api/auth/me")).json()
    assert me["display_name"] == "Ada L." and me["theme"] == "dark" and me["email_verified"] is False

    light = await client.patch("/api/auth/me", json={"theme": "light"})
    assert light.status_code == 200 and light.json()["theme"] == "light" and light.json()["display_name"] == "Ada L."
    cleared = await client.patch("/api/auth/me", json={"display_name": None})
    assert cleared.json()["display_name"] is None and cleared.json()["theme"] == "light"
    assert (await client.get("/api/auth/me")).json()["theme"] == "light"  # remembered
    for bad in ({"theme": "purple"}, {"theme": None}, {"display_name": "x" * 101}, {"email": "a@b.c"}):
        refused = await client.patch("/api/auth/me", json=bad)
        assert refused.status_code == 422, (bad, refused.text)
        assert refused.json()["detail"][0]["loc"][-1] in ("theme", "display_name", "email")

"""Google sign-in end to end against a real OpenID Connect provider the test runs on
loopback: discovery document, JWKS, RS256-signed ID tokens, the authorization-code flow
with state and nonce. The gateway's authlib client talks to it over HTTP exactly as it
would to Google; nothing of authlib is stubbed."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
import pytest_asyncio
import uvicorn
from joserfc import jwt
from joserfc.jwk import RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse
from starlette.routing import Route

from pydantic import SecretStr

from inflab.core.settings import Settings
from helpers.gateway import TEST_PASSWORD, delete_streams, gateway_in_process, isolated_settings
from mailserver import LocalSmtp, link_token

pytestmark = pytest.mark.integration

CLIENT_ID = "inflab-test-client"
CLIENT_SECRET = "inflab-test-secret"


class OpenIDProvider:
    """A minimal OpenID provider. ``identity`` is who "signs in" at the next authorize."""

    def __init__(self) -> None:
        self.key = RSAKey.generate_key(2048, parameters={"kid": "test-key", "use": "sig"})
        self.issuer = ""
        self.identity: dict = {}
        self.codes: dict[str, dict] = {}
        self.app = Starlette(routes=[
            Route("/.well-known/openid-configuration", self.discovery),
            Route("/authorize", self.authorize),
            Route("/token", self.token, methods=["POST"]),
            Route("/jwks", self.jwks),
        ])

    async def discovery(self, request: Request) -> JSONResponse:
        return JSONResponse({
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "jwks_uri": f"{self.issuer}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        })

    async def jwks(self, request: Request) -> JSONResponse:
        return JSONResponse({"keys": [self.key.as_dict(private=False)]})

    async def authorize(self, request: Request) -> RedirectResponse:
        q = request.query_params
        assert q["client_id"] == CLIENT_ID and q["response_type"] == "code" and "openid" in q["scope"].split()
        code = secrets.token_urlsafe(16)
        self.codes[code] = {"nonce": q.get("nonce"), "redirect_uri": q["redirect_uri"], **self.identity}
        return RedirectResponse(f"{q['redirect_uri']}?{urlencode({'code': code, 'state': q['state']})}", 302)

    async def token(self, request: Request) -> JSONResponse:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        auth = httpx.BasicAuth(CLIENT_ID, CLIENT_SECRET)._auth_header
        sent_secret = form.get("client_secret") == CLIENT_SECRET or request.headers.get("authorization") == auth
        grant = self.codes.pop(form.get("code", ""), None)
        if not sent_secret or grant is None or form.get("redirect_uri") != grant["redirect_uri"]:
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": CLIENT_ID, "iat": now, "exp": now + 300, "nonce": grant["nonce"],
                  **{k: grant[k] for k in ("sub", "email", "email_verified")}}
        id_token = jwt.encode({"alg": "RS256", "kid": "test-key"}, claims, self.key)
        return JSONResponse({"access_token": secrets.token_urlsafe(16), "token_type": "Bearer", "expires_in": 300,
                             "id_token": id_token, "scope": "openid email profile"})


@pytest_asyncio.fixture
async def provider() -> AsyncIterator[OpenIDProvider]:
    op = OpenIDProvider()
    server = uvicorn.Server(uvicorn.Config(op.app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:
            assert not task.done(), "the provider did not start"
            await asyncio.sleep(0.01)
    op.issuer = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    yield op
    server.should_exit = True
    await task


@pytest.fixture(scope="module")
def google_settings(settings: Settings) -> Iterator[Settings]:
    own = isolated_settings(settings, "google")
    yield own
    asyncio.run(delete_streams(own))


def with_provider(settings: Settings, op: OpenIDProvider) -> Settings:
    # Plain http in process: the session cookie without Secure, as in the embedded stack.
    return settings.model_copy(update={
        "google_client_id": CLIENT_ID,
        "google_client_secret": SecretStr(CLIENT_SECRET),
        "google_discovery_url": f"{op.issuer}/.well-known/openid-configuration",
        "post_login_redirect": "/app",
        "cookie_secure": False,
    })


async def sign_in_with_google(client: httpx.AsyncClient, op: OpenIDProvider) -> httpx.Response:
    """The browser's part: to the provider and back. Returns the gateway's callback answer."""
    start = await client.get("/api/auth/google/login")
    assert start.status_code == 302, start.text
    assert start.headers["location"].startswith(f"{op.issuer}/authorize?")
    async with httpx.AsyncClient() as browser_at_provider:
        consent = await browser_at_provider.get(start.headers["location"])
    assert consent.status_code == 302
    back = urlsplit(consent.headers["location"])
    assert back.path == "/api/auth/google/callback"
    return await client.get(f"{back.path}?{back.query}")


async def test_google_sign_in_links_to_the_account_with_the_verified_email(google_settings, provider) -> None:
    async with LocalSmtp() as smtp, gateway_in_process(
        smtp.settings(with_provider(google_settings, provider)), signed_in=False
    ) as (_, client):
        assert (await client.get("/api/auth/providers")).json() == {
            "password": True, "google": True, "email_verification_required": False}
        address = f"{uuid.uuid4().hex[:10]}@example.org"
        registered = await client.post("/api/auth/register", json={"email": address, "password": TEST_PASSWORD})
        account_id = registered.json()["user"]["id"]
        # The owner follows the verification link: only then may Google be linked as it is.
        token = link_token(await smtp.next_mail(address), "/verify-email", google_settings.public_url)
        assert (await client.post("/api/auth/verify-email", json={"token": token})).status_code == 200
        client.cookies.clear()

        provider.identity = {"sub": "google-1", "email": address.upper(), "email_verified": True}
        callback = await sign_in_with_google(client, provider)
        assert callback.status_code == 302 and callback.headers["location"] == "/app"
        assert "HttpOnly" in next(c for c in callback.headers.get_list("set-cookie") if c.startswith("inflab_session="))
        me = (await client.get("/api/auth/me")).json()
        assert me["id"] == account_id and me["sign_in_methods"] == ["password", "google"]

        # Again: the linked identity signs in to the same account.
        client.cookies.clear()
        assert (await sign_in_with_google(client, provider)).status_code == 302
        assert (await client.get("/api/auth/me")).json()["id"] == account_id

        # A new verified address gets its own account, Google-only.
        client.cookies.clear()
        provider.identity = {"sub": "google-2", "email": f"new-{address}", "email_verified": True}
        assert (await sign_in_with_google(client, provider)).status_code == 302
        me = (await client.get("/api/auth/me")).json()
        assert me["email"] == f"new-{address}" and me["sign_in_methods"] == ["google"]


async def test_google_takes_over_an_unverified_account_from_whoever_registered_it(google_settings, provider) -> None:
    """Someone registers the victim's address with a password of their own, and waits. When
    the victim signs in with Google, the account is theirs alone: the squatter's password,
    sessions and API tokens are gone."""
    async with gateway_in_process(with_provider(google_settings, provider), signed_in=False) as (_, client):
        address = f"{uuid.uuid4().hex[:10]}@example.org"
        squatter = (await client.post("/api/auth/register", json={"email": address, "password": TEST_PASSWORD})).json()
        squatter_bearer = {"Authorization": f"Bearer {squatter['access_token']}"}
        api_token = (await client.post("/api/tokens", json={"name": "kept"}, headers=squatter_bearer)).json()["token"]
        client.cookies.clear()

        provider.identity = {"sub": f"google-{uuid.uuid4().hex[:6]}", "email": address, "email_verified": True}
        assert (await sign_in_with_google(client, provider)).status_code == 302
        me = (await client.get("/api/auth/me")).json()
        assert me["id"] == squatter["user"]["id"] and me["sign_in_methods"] == ["google"]
        assert me["email_verified"] is True
        assert (await client.get("/api/auth/me", headers=squatter_bearer)).status_code == 401
        assert (await client.get("/api/experiments", headers={"Authorization": f"Bearer {api_token}"})).status_code == 401
        refused = await client.post("/api/auth/login", json={"email": address, "password": TEST_PASSWORD})
        assert refused.status_code == 401


async def test_google_sign_in_refuses_unverified_email_and_forged_state(google_settings, provider) -> None:
    async with gateway_in_process(with_provider(google_settings, provider), signed_in=False) as (_, client):
        address = f"{uuid.uuid4().hex[:10]}@example.org"
        await client.post("/api/auth/register", json={"email": address, "password": TEST_PASSWORD})
        client.cookies.clear()
        provider.identity = {"sub": "google-3", "email": address, "email_verified": False}
        refused = await sign_in_with_google(client, provider)
        assert refused.status_code == 400 and "not verified" in refused.text
        assert (await client.get("/api/auth/me")).status_code == 401

        # A callback this browser did not start (state it never got) is refused.
        provider.identity = {"sub": "google-4", "email": address, "email_verified": True}
        start = await client.get("/api/auth/google/login")
        async with httpx.AsyncClient() as elsewhere:
            consent = await elsewhere.get(start.headers["location"])
        code = dict(p.split("=", 1) for p in urlsplit(consent.headers["location"]).query.split("&"))["code"]
        forged = await client.get(f"/api/auth/google/callback?code={code}&state=forged")
        assert forged.status_code == 400
        assert (await client.get("/api/auth/me")).status_code == 401


async def test_google_sign_in_is_off_unless_configured(google_settings) -> None:
    async with gateway_in_process(google_settings, signed_in=False) as (_, client):
        assert (await client.get("/api/auth/providers")).json()["google"] is False
        assert (await client.get("/api/auth/google/login")).status_code == 404
        assert (await client.get("/api/auth/google/callback?code=x&state=y")).status_code == 404

"""An anonymous request that would need a signed-in caller is refused before its body is
read; sign-in routes and requests carrying a credential go on to the routes."""

from __future__ import annotations

import httpx

from inflab.core.settings import Settings
from inflab.gateway.app import create_app


def client() -> httpx.AsyncClient:
    app = create_app(Settings(database_url="postgresql://unused/unused"))
    # No lifespan here (no database): a request the gate lets through fails further in,
    # which is all these tests need to tell it from the gate's own answer.
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://test")


async def test_an_anonymous_body_is_refused_unread():
    reads = 0

    async def body():
        nonlocal reads
        for _ in range(64):
            reads += 1
            yield b" " * 65536
        yield b"{}"

    async with client() as c:
        answer = await c.post("/api/estimates", content=body(), headers={"content-type": "application/json"})
        assert answer.status_code == 401
        assert answer.json() == {"detail": "sign in or send a bearer token"}
        assert answer.headers["www-authenticate"] == "Bearer"
        # The transport may hand over a first chunk; the gate never asks for the rest.
        assert reads <= 1
        for path in ("/api/experiments", "/api/experiments/x/runs", "/api/tokens"):
            assert (await c.post(path, json={})).status_code == 401


async def test_sign_in_routes_and_credentials_pass_the_gate():
    async with client() as c:
        for path in ("/api/auth/login", "/api/auth/register", "/api/auth/password-reset"):
            assert (await c.post(path, json={})).status_code != 401, path
        # A credential of any kind passes: its validity is the route's to check.
        assert (await c.post("/api/imports/parse", json={}, headers={"Authorization": "Bearer nope"})).status_code != 401
        cookie = {"Cookie": "other=1; __Host-inflab_session=abc"}  # the Secure default's name
        assert (await c.post("/api/imports/parse", json={}, headers=cookie)).status_code != 401
        assert (await c.get("/api/limits")).status_code != 401  # reads are not gated

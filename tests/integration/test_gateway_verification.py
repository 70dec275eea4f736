"""Mailed links against the real gateway, Postgres and a real SMTP server on loopback
(aiosmtpd): email verification at registration, password reset, the answers that tell
nothing about which addresses have accounts, the limits on mails, STARTTLS with
authentication, and mails written to a folder when no SMTP host is set. Every link is
read from the mail the server received."""

from __future__ import annotations

import asyncio
import os
import stat
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from email import message_from_bytes, policy

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import func, select, update

from inflab.core.db.models import EmailToken
from inflab.core.settings import Settings
from inflab.gateway.auth.tokens import token_hash
from helpers.gateway import TEST_PASSWORD, delete_streams, gateway_in_process, isolated_settings
from mailserver import LocalSmtp, link_token, self_signed_certificate

pytestmark = pytest.mark.integration

PUBLIC_URL = "https://lab.example.org"


@pytest.fixture(scope="module")
def verify_settings(settings: Settings) -> Iterator[Settings]:
    own = isolated_settings(settings, "verify").model_copy(
        update={"require_email_verification": True, "public_url": PUBLIC_URL}
    )
    yield own
    asyncio.run(delete_streams(own))


@pytest.fixture
async def smtp():
    async with LocalSmtp() as server:
        yield server


@pytest.fixture
async def gateway(verify_settings, smtp):
    async with gateway_in_process(smtp.settings(verify_settings), signed_in=False) as (app, client):
        yield app, client


def email() -> str:
    return f"{uuid.uuid4().hex[:12]}@example.org"


def bearer(signed_in: dict) -> dict[str, str]:
    return {"Authorization": f"Bearer {signed_in['access_token']}"}


async def register_and_verify(client: httpx.AsyncClient, smtp: LocalSmtp, address: str) -> dict:
    assert (await client.post("/api/auth/register", json={"email": address, "password": TEST_PASSWORD})).status_code == 202
    token = link_token(await smtp.next_mail(address), "/verify-email", PUBLIC_URL)
    verified = await client.post("/api/auth/verify-email", json={"token": token})
    assert verified.status_code == 200, verified.text
    return verified.json()


async def test_a_new_account_signs_in_only_after_following_the_mailed_link(gateway, smtp) -> None:
    app, client = gateway
    address = email()
    registered = await client.post("/api/auth/register", json={"email": address, "password": TEST_PASSWORD})
    assert registered.status_code == 202
    assert registered.json() == {"email": address, "verification_required": True}
    assert not registered.headers.get_list("set-cookie")  # no session yet

    mail = await smtp.next_mail(address)
    assert "Confirm your email" in mail["Subject"] and mail["To"] == address
    token = link_token(mail, "/verify-email", PUBLIC_URL)
    async with app.state.sessionmaker() as session:  # only the token's hash is stored
        assert await session.scalar(select(func.count()).where(EmailToken.token_hash == token_hash(token))) == 1
        assert await session.scalar(select(func.count()).where(EmailToken.token_hash == token)) == 0

    # The right password says "verify first"; a wrong one says no more than for anyone.
    unverified = await client.post("/api/auth/login", json={"email": address, "password": TEST_PASSWORD})
    assert unverified.status_code == 403 and "verify" in unverified.json()["detail"]
    assert "resend" in unverified.json()["detail"]
    wrong = await client.post("/api/auth/login", json={"email": address, "password": "not the password"})
    assert wrong.status_code == 401

    bad = await client.post("/api/auth/verify-email", json={"token": "made-up"})
    assert bad.status_code == 400 and bad.json()["detail"][0]["loc"] == ["body", "token"]
    verified = await client.post("/api/auth/verify-email", json={"token": token})
    assert verified.status_code == 200, verified.text
    assert verified.json()["user"]["email_verified"] is True and verified.json()["user"]["email"] == address
    assert (await client.get("/api/auth/me", headers=bearer(verified.json()))).status_code == 200
    used = await client.post("/api/auth/verify-email", json={"token": token})
    assert used.status_code == 400  # single use
    assert (await client.post("/api/auth/login", json={"email": address, "password": TEST_PASSWORD})).status_code == 200


async def test_registering_a_taken_address_answers_the_same_and_tells_its_owner(gateway, smtp) -> None:
    _, client = gateway
    address = email()
    await register_and_verify(client, smtp, address)
    again = await client.post("/api/auth/register", json={"email": address, "password": "someone else's password"})
    assert again.status_code == 202 and again.json() == {"email": address, "verification_required": True}
    notice = await smtp.next_mail(address, after=1)
    assert "already has one" in notice.get_content() and "token=" not in notice.get_content()
    # The second registration changed nothing.
    assert (await client.post("/api/auth/login", json={"email": address, "password": TEST_PASSWORD})).status_code == 200
    assert (await client.post("/api/auth/login",
                              json={"email": address, "password": "someone else's password"})).status_code == 401


async def test_a_new_verification_link_replaces_the_old_and_unknown_addresses_get_no_mail(gateway, smtp) -> None:
    _, client = gateway
    address, unknown = email(), email()
    await client.post("/api/auth/register", json={"email": address, "password": TEST_PASSWORD})
    first = link_token(await smtp.next_mail(address), "/verify-email", PUBLIC_URL)
    assert (await client.post("/api/auth/verify-email/resend", json={"email": unknown})).status_code == 202
    assert (await client.post("/api/auth/verify-email/resend", json={"email": address})).status_code == 202
    second = link_token(await smtp.next_mail(address, after=1), "/verify-email", PUBLIC_URL)
    assert smtp.mails_to(unknown) == []  # the mails are sent before the in-process answer returns
    assert (await client.post("/api/auth/verify-email", json={"token": first})).status_code == 400
    assert (await client.post("/api/auth/verify-email", json={"token": second})).status_code == 200
    # A verified account gets no more links.
    assert (await client.post("/api/auth/verify-email/resend", json={"email": address})).status_code == 202
    assert len(smtp.mails_to(address)) == 2


async def test_an_expired_link_is_refused(gateway, smtp) -> None:
    app, client = gateway
    address = email()
    await client.post("/api/auth/register", json={"email": address, "password": TEST_PASSWORD})
    token = link_token(await smtp.next_mail(address), "/verify-email", PUBLIC_URL)
    async with app.state.sessionmaker() as session:
        await session.execute(update(EmailToken).where(EmailToken.token_hash == token_hash(token))
                              .values(expires_at=datetime.now(timezone.utc) - timedelta(seconds=1)))
        await session.commit()
    expired = await client.post("/api/auth/verify-email", json={"token": token})
    assert expired.status_code == 400 and expired.json()["detail"][0]["loc"] == ["body", "token"]


async def test_a_password_reset_by_mail_ends_every_session_and_api_token(gateway, smtp) -> None:
    _, client = gateway
    address, unknown = email(), email()
    signed_in = await register_and_verify(client, smtp, address)
    api_token = (await client.post("/api/tokens", json={"name": "pipeline"}, headers=bearer(signed_in))).json()["token"]

    assert (await client.post("/api/auth/password-reset", json={"email": unknown})).status_code == 202
    assert (await client.post("/api/auth/password-reset", json={"email": address})).status_code == 202
    assert smtp.mails_to(unknown) == []
    mail = await smtp.next_mail(address, after=1)
    assert "Reset your" in mail["Subject"]
    token = link_token(mail, "/reset-password", PUBLIC_URL)

    bad = await client.post("/api/auth/password-reset/confirm", json={"token": "made-up", "new_password": "a fine new password"})
    assert bad.status_code == 400 and bad.json()["detail"][0]["loc"] == ["body", "token"]
    weak = await client.post("/api/auth/password-reset/confirm", json={"token": token, "new_password": "short"})
    assert weak.status_code == 422 and weak.json()["detail"][0]["loc"] == ["body", "new_password"]
    new_password = "a fine new password 7"
    done = await client.post("/api/auth/password-reset/confirm", json={"token": token, "new_password": new_password})
    assert done.status_code == 204, done.text  # the weak attempt did not use the link up

    assert (await client.get("/api/auth/me", headers=bearer(signed_in))).status_code == 401
    assert (await client.get("/api/experiments", headers={"Authorization": f"Bearer {api_token}"})).status_code == 401
    assert (await client.post("/api/auth/login", json={"email": address, "password": TEST_PASSWORD})).status_code == 401
    assert (await client.post("/api/auth/login", json={"email": address, "password": new_password})).status_code == 200
    again = await client.post("/api/auth/password-reset/confirm", json={"token": token, "new_password": "yet another one 8"})
    assert again.status_code == 400
    changed = await smtp.next_mail(address, after=2)
    assert "password was changed" in changed["Subject"]


async def test_a_reset_link_also_verifies_the_address(gateway, smtp) -> None:
    _, client = gateway
    address = email()
    await client.post("/api/auth/register", json={"email": address, "password": TEST_PASSWORD})
    await smtp.next_mail(address)  # the verification mail, not followed
    await client.post("/api/auth/password-reset", json={"email": address})
    token = link_token(await smtp.next_mail(address, after=1), "/reset-password", PUBLIC_URL)
    new_password = "a fine new password 9"
    assert (await client.post("/api/auth/password-reset/confirm",
                              json={"token": token, "new_password": new_password})).status_code == 204
    signed_in = await client.post("/api/auth/login", json={"email": address, "password": new_password})
    assert signed_in.status_code == 200 and signed_in.json()["user"]["email_verified"] is True


async def test_mails_are_limited_per_address_and_per_client(verify_settings, smtp) -> None:
    strict = smtp.settings(verify_settings, mail_max_per_window=2)
    async with gateway_in_process(strict, signed_in=False) as (app, _):
        address = email()

        def client(n: int) -> httpx.AsyncClient:
            return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(f"198.51.100.{n}", 4000)),
                                     base_url="http://gateway")

        async with client(uuid.uuid4().int % 200 + 1) as first:
            await first.post("/api/auth/register", json={"email": address, "password": TEST_PASSWORD})
        # From three other clients: all answered 202, but the address gets two more at most.
        for _ in range(3):
            async with client(uuid.uuid4().int % 200 + 1) as other:
                assert (await other.post("/api/auth/password-reset", json={"email": address})).status_code == 202
        assert len(smtp.mails_to(address)) == 1 + 2
        # One client asking for many addresses is refused outright.
        async with client(uuid.uuid4().int % 50 + 201) as flooder:
            answers = [(await flooder.post("/api/auth/password-reset", json={"email": email()})).status_code
                       for _ in range(3)]
        assert answers == [202, 202, 429]


async def test_with_verification_off_the_account_works_at_once_and_the_link_still_verifies(verify_settings, smtp) -> None:
    relaxed = smtp.settings(verify_settings, require_email_verification=False)
    async with gateway_in_process(relaxed, signed_in=False) as (_, client):
        address = email()
        registered = await client.post("/api/auth/register", json={"email": address, "password": TEST_PASSWORD})
        assert registered.status_code == 201 and registered.json()["user"]["email_verified"] is False
        token = link_token(await smtp.next_mail(address), "/verify-email", PUBLIC_URL)
        verified = await client.post("/api/auth/verify-email", json={"token": token})
        assert verified.status_code == 200 and verified.json()["user"]["email_verified"] is True
        taken = await client.post("/api/auth/register", json={"email": address, "password": TEST_PASSWORD})
        assert taken.status_code == 409  # nothing to hide where anyone can sign up and sign in at once


async def test_starttls_and_smtp_authentication(verify_settings, tmp_path, monkeypatch) -> None:
    cert, key = self_signed_certificate(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the client trusts the test's certificate
    async with LocalSmtp(tls_cert=(cert, key), credentials=("inflab", "relay secret")) as relay:
        secured = relay.settings(verify_settings, smtp_security="starttls", smtp_username="inflab",
                                 smtp_password=SecretStr("relay secret"))
        async with gateway_in_process(secured, signed_in=False) as (_, client):
            address = email()
            assert (await client.post("/api/auth/register", json={"email": address, "password": TEST_PASSWORD})).status_code == 202
            await relay.next_mail(address)
        _, _, _, over_tls, authenticated = relay.received[-1]
        assert over_tls and authenticated


async def test_without_an_smtp_host_mails_are_written_to_the_mail_folder(verify_settings, tmp_path) -> None:
    folder = tmp_path / "mail"
    local = verify_settings.model_copy(update={"smtp_host": "", "mail_dir": folder})
    async with gateway_in_process(local, signed_in=False) as (_, client):
        address = email()
        assert (await client.post("/api/auth/register", json={"email": address, "password": TEST_PASSWORD})).status_code == 202
    [path] = list(folder.glob("*.eml"))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    message = message_from_bytes(path.read_bytes(), policy=policy.default)
    assert message["To"] == address
    token = link_token(message, "/verify-email", PUBLIC_URL)
    # The link reads as it is in the file (no quoted-printable "=3D"): a newcomer opens it.
    assert f"{PUBLIC_URL}/verify-email?token={token}\n".encode() in path.read_bytes()

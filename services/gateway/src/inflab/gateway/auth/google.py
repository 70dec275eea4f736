"""Google sign-in through OpenID Connect (authlib's Starlette client): the provider's
discovery document names its endpoints and keys, authlib checks the ID token's signature,
issuer, audience, expiry and nonce. Any OpenID provider works the same way, which is how
the tests run it against one of their own on loopback."""

from __future__ import annotations

from authlib.integrations.starlette_client import OAuth

from inflab.core.settings import Settings

PROVIDER = "google"


def google_enabled(settings: Settings) -> bool:
    return bool(settings.google_client_id and settings.google_client_secret.get_secret_value())


def make_oauth(settings: Settings) -> OAuth:
    oauth = OAuth()
    if google_enabled(settings):
        oauth.register(
            name=PROVIDER,
            client_id=settings.google_client_id,
            client_secret=settings.google_client_secret.get_secret_value(),
            server_metadata_url=settings.google_discovery_url,
            client_kwargs={"scope": "openid email profile"},
        )
    return oauth

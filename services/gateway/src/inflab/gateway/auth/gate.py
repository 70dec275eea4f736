"""Refuse a request that needs a signed-in caller but carries no credential at all, before
its body is read.

FastAPI parses a request's JSON body before it runs the dependencies that check who is
asking, so without this an anonymous client could make the gateway parse megabytes of
JSON (up to ``max_request_bytes``) per request just to be told 401. Only whether a
credential is present is checked here (a header or the session cookie): no database, no
hashing; whether it is valid is still the route's dependency's to say.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Receive, Scope, Send

from inflab.core.settings import Settings
from inflab.gateway.auth.cookies import session_cookie

#: Routes that take a body from someone not signed in (signing in, mailed links).
PUBLIC_BODY_PATHS = frozenset({
    "/api/auth/register",
    "/api/auth/login",
    "/api/auth/verify-email",
    "/api/auth/verify-email/resend",
    "/api/auth/password-reset",
    "/api/auth/password-reset/confirm",
})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class CredentialGateMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.cookie = session_cookie(settings).encode()

    def _has_credential(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                return True
            if name == b"cookie" and any(part.strip().startswith(self.cookie + b"=") for part in value.split(b";")):
                return True
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] in BODY_METHODS
            and scope["path"].startswith("/api/")
            and scope["path"].rstrip("/") not in PUBLIC_BODY_PATHS
            and not self._has_credential(scope)
        ):
            body = json.dumps({"detail": "sign in or send a bearer token"}).encode()
            await send({
                "type": "http.response.start",
                "status": 401,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"www-authenticate", b"Bearer")],
            })
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)

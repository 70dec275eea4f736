"""The browser's session cookie and its companion CSRF cookie.

With ``cookie_secure`` (the default) the session cookie is ``__Host-inflab_session``:
the browser then accepts it only over https, from this host, for path ``/`` and without
a ``Domain``, so no sibling subdomain can plant or overwrite it. The embedded stack
serves plain http on 127.0.0.1 and turns ``cookie_secure`` off: the cookie is then
``inflab_session`` (a Secure cookie would never come back over http). Only the name for
the current setting is read, so an unprefixed cookie cannot stand in for the prefixed one.

The web app does not read cookies: it takes the CSRF token from the sign-in answer or
``GET /api/auth/me``. The ``inflab_csrf`` cookie holds the same token for scripts that
prefer a cookie.
"""

from __future__ import annotations

from fastapi import Response

from inflab.core.settings import Settings


def _name(base: str, settings: Settings) -> str:
    return f"__Host-{base}" if settings.cookie_secure else base


def session_cookie(settings: Settings) -> str:
    return _name("inflab_session", settings)


def csrf_cookie(settings: Settings) -> str:
    return _name("inflab_csrf", settings)


def set_session_cookies(response: Response, settings: Settings, token: str, csrf_token: str) -> None:
    max_age = int(settings.session_ttl_s)
    secure = settings.cookie_secure
    response.set_cookie(session_cookie(settings), token, max_age=max_age, httponly=True, secure=secure,
                        samesite="lax", path="/")
    response.set_cookie(csrf_cookie(settings), csrf_token, max_age=max_age, httponly=False, secure=secure,
                        samesite="lax", path="/")


def clear_session_cookies(response: Response, settings: Settings) -> None:
    for name in (session_cookie(settings), csrf_cookie(settings)):
        response.delete_cookie(name, path="/", secure=settings.cookie_secure, httponly=True, samesite="lax")

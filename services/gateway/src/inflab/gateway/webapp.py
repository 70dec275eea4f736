"""The browser app: the built files of ``services/gateway/web`` (``make web``), served at
``/`` on the same origin as ``/api``.

Every path that is not the API or one of the gateway's own documents answers with
``index.html``, so a deep link (``/runs/{id}``) reloads into the app, which routes it in
the browser. Hashed bundles under ``/assets/`` are cached for a year; ``index.html`` is
revalidated on every load, so a deploy is picked up at once.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request, status
from fastapi.responses import FileResponse, HTMLResponse, Response
from starlette.staticfiles import StaticFiles

log = logging.getLogger(__name__)

#: Where ``make web`` builds the app in a source checkout (services/gateway/web/dist).
SOURCE_DIST = Path(__file__).resolve().parents[3] / "web" / "dist"

#: Paths the app never answers for: the API and the gateway's own endpoints. An unknown
#: ``/api/...`` path stays a JSON 404 instead of becoming the app's page.
RESERVED_PREFIXES = ("api/", "assets/")
RESERVED_PATHS = frozenset({"api", "healthz", "readyz", "metrics", "openapi.json", "asyncapi.json", "docs", "redoc"})

# The app loads nothing from elsewhere (fonts are bundled); the chart library and React
# set inline styles, and exports are drawn on canvases turned into blob/data URLs.
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data: blob:",
    "font-src 'self'",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

NOT_BUILT = """<!doctype html><meta charset="utf-8"><title>Influence Lab</title>
<body style="font-family:sans-serif;background:#0F172A;color:#E2E8F0;padding:2rem">
<h1>Influence Lab</h1><p>The web app is not built. Run <code>make web</code> (or
<code>make demo</code>) and reload; the API is at <a style="color:#3B82F6" href="/docs">/docs</a>.</p>"""


class _ImmutableAssets(StaticFiles):
    async def get_response(self, path: str, scope) -> Response:
        response = await super().get_response(path, scope)
        if response.status_code == 200:
            # Vite names every bundle by its content hash.
            response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
            response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def _public_file(root: Path, path: str) -> Path | None:
    """A file at the top of the build (favicon.svg, theme-init.js), never outside it."""
    if not path or "/" in path or path.startswith("."):
        return None
    candidate = (root / path).resolve()
    if candidate.parent != root or not candidate.is_file():
        return None
    return candidate


def mount_web_app(app: FastAPI, web_dir: Path | None) -> None:
    """Serve the app from ``web_dir`` (default: the source checkout's build). Call after
    every API router is included: the page route matches whatever is left."""
    root = (web_dir or SOURCE_DIST).resolve()
    index = root / "index.html"
    if (root / "assets").is_dir():
        app.mount("/assets", _ImmutableAssets(directory=root / "assets"), name="assets")
    else:
        log.warning("web app not built at %s: / shows how to build it", root)

    @app.api_route("/{path:path}", methods=["GET", "HEAD"], include_in_schema=False)
    async def web_page(path: str, request: Request) -> Response:
        if path in RESERVED_PATHS or path.startswith(RESERVED_PREFIXES):
            raise HTTPException(status.HTTP_404_NOT_FOUND, "not found")
        file = _public_file(root, path)
        if file is not None:
            return FileResponse(file, headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})
        if not index.is_file():
            return HTMLResponse(NOT_BUILT, status_code=status.HTTP_503_SERVICE_UNAVAILABLE, headers=PAGE_HEADERS)
        return FileResponse(index, media_type="text/html", headers=PAGE_HEADERS)

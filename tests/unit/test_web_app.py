"""The gateway serves the built browser app: the page at / and at every deep link, hashed
assets cached for good, a strict CSP, and the API's own 404s kept as JSON."""

from __future__ import annotations

import httpx
import pytest

from inflab.core.settings import Settings
from inflab.gateway.app import create_app

INDEX = "<!doctype html><title>Influence Lab</title><div id=root></div>"


@pytest.fixture
def web_dir(tmp_path):
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text(INDEX)
    (tmp_path / "assets" / "index-abc123.js").write_text("console.log(1)")
    (tmp_path / "favicon.svg").write_text("<svg/>")
    (tmp_path.parent / "secret.txt").write_text("not for the web")
    return tmp_path


def client_for(web_dir) -> httpx.AsyncClient:
    # Only the routes are exercised: no lifespan, so no database or bus is opened.
    app = create_app(Settings(database_url="postgresql://unused/unused", web_dir=web_dir))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_the_app_answers_every_page_path(web_dir):
    async with client_for(web_dir) as client:
        for path in ("/", "/experiments", "/experiments/1b4e28ba-2fa1-11d2-883f-0016d3cca427", "/runs/abc", "/settings"):
            answer = await client.get(path)
            assert answer.status_code == 200, path
            assert answer.text == INDEX
            assert answer.headers["content-type"].startswith("text/html")
            assert answer.headers["cache-control"] == "no-cache"
            csp = answer.headers["content-security-policy"]
            assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert (await client.head("/runs/abc")).status_code == 200


async def test_hashed_assets_are_cached_and_files_stay_inside_the_build(web_dir):
    async with client_for(web_dir) as client:
        asset = await client.get("/assets/index-abc123.js")
        assert asset.status_code == 200 and "immutable" in asset.headers["cache-control"]
        assert (await client.get("/favicon.svg")).text == "<svg/>"
        # Anything outside the build folder is never served: the page comes back instead.
        for path in ("/../secret.txt", "/%2e%2e/secret.txt", "/assets/../../secret.txt"):
            answer = await client.get(path)
            assert "not for the web" not in answer.text


async def test_api_and_gateway_paths_keep_their_own_answers(web_dir):
    async with client_for(web_dir) as client:
        missing = await client.get("/api/no-such-route")
        assert missing.status_code == 404
        assert missing.headers["content-type"].startswith("application/json")
        assert (await client.get("/openapi.json")).json()["info"]["title"] == "Influence Lab"
        assert (await client.get("/assets/missing.js")).status_code == 404


async def test_an_unbuilt_app_says_how_to_build_it(tmp_path):
    async with client_for(tmp_path / "nothing") as client:
        answer = await client.get("/experiments")
        assert answer.status_code == 503
        assert "make web" in answer.text


def test_openapi_describes_the_event_stream():
    document = create_app(Settings(database_url="postgresql://unused/unused")).openapi()
    stream = document["paths"]["/api/runs/{run_id}/events"]["get"]["responses"]["200"]["content"]["text/event-stream"]
    kinds = {ref["$ref"].rsplit("/", 1)[1] for ref in stream["schema"]["oneOf"]}
    assert {"StatusEvent", "MetricEvent", "ParamsEvent", "PredictionEvent", "ResultEvent"} <= kinds
    for kind in kinds:
        assert kind in document["components"]["schemas"]

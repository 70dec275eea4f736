"""``python -m inflab.gateway.openapi [--output PATH]``: the HTTP contract as JSON, the
input of the browser app's generated client (``make web-api``). The document is
FastAPI's own, built from the routes without starting the app."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from inflab.core.settings import Settings


def build_openapi() -> dict[str, Any]:
    from inflab.gateway.app import create_app

    # Only the routes matter; no connection is opened until the lifespan runs.
    return create_app(Settings(database_url="postgresql://unused/unused")).openapi()


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", "-o", help="write here instead of standard output")
    args = parser.parse_args(argv)
    text = render(build_openapi())
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

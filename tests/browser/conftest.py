"""The browser tests: the web app in Debian's Chromium, driven by Playwright, against the
real stack as ``inflab up`` starts it (its own NATS with authentication, Ray, the four
services, each its own process; Postgres on the test server in a fresh database when
``INFLAB_DATABASE_URL`` names one, else from the wheel), with email verification on and
its mails going to a real SMTP server in this process (aiosmtpd). Runs train a tiny
random model the operator placed in the stack's models folder, so they take seconds.

Chromium is the system's (``/usr/bin/chromium``, never a downloaded one). Without it the
tests skip with the reason, unless ``INFLAB_REQUIRE_BROWSER`` is set (CI sets it), where a
missing browser fails. Screenshots of every page, dark and light, go to
``artifacts/screenshots/``.

The tests of one module are one researcher's session, in order: each builds on what the
previous left (an account, an experiment, a run).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from playwright.sync_api import expect

from helpers.browser import CHROMIUM, SCREENSHOTS, TINY_MODEL, Mailbox, WebStack
from inflab.devtools.embedded._proc import free_port
from helpers.tiny_model import build_tiny_model



# A page on a loaded 2-core machine may take a while to show what is awaited.
expect.set_options(timeout=20_000)


# --------------------------------------------------------------------------- the browser
@pytest.fixture(scope="session")
def chromium_path() -> str:
    if CHROMIUM.exists():
        return str(CHROMIUM)
    reason = "Debian's chromium is not installed (apt-get install chromium): the browser tests need /usr/bin/chromium"
    if os.environ.get("INFLAB_REQUIRE_BROWSER"):
        pytest.fail(reason)
    pytest.skip(reason)


# Per module, not per session: Playwright's sync API runs an event loop in this thread for
# as long as it is open, and the asyncio tests after these need the thread back.
@pytest.fixture(scope="module")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=chromium_path,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--no-first-run", "--disable-sync"],
        )
        yield instance
        instance.close()


# --------------------------------------------------------------------------- mail
@pytest.fixture(scope="session")
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    from aiosmtpd.controller import Controller

    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


# --------------------------------------------------------------------------- the stack
async def _create_database(server_url: str, name: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(server_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base, _, _ = server_url.rpartition("/")
    return f"{base}/{name}"


async def _drop_database(server_url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(server_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def _run(coroutine):
    """Run a coroutine to its end on its own thread: Playwright's sync API keeps an event
    loop running in this one."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _stop(process: subprocess.Popen, timeout: float = 90) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGINT)  # `inflab up` stops everything in order
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


@pytest.fixture(scope="session")
def web_stack(tmp_path_factory, mailbox, chromium_path, run_tag) -> Iterator[WebStack]:
    """``inflab up`` in its own process group, ready; stopped (SIGINT) afterwards."""
    box, smtp_port = mailbox
    home = tmp_path_factory.mktemp("web-stack") / "home"
    build_tiny_model(home / "models" / TINY_MODEL, seed=0)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFLAB_")}
    env.update(
        INFLAB_HOME=str(home),
        INFLAB_GATEWAY_PORT=str(port),
        INFLAB_PUBLIC_URL=url,
        INFLAB_EMBEDDED_NATS_PORT="0",
        INFLAB_EMBEDDED_POSTGRES_PORT="0",
        INFLAB_REQUIRE_EMAIL_VERIFICATION="true",
        INFLAB_SMTP_HOST="127.0.0.1",
        INFLAB_SMTP_PORT=str(smtp_port),
        INFLAB_SMTP_SECURITY="none",
        INFLAB_TRAIN_NUM_CPUS="1",
        INFLAB_SSE_HEARTBEAT_S="5",
    )
    server = os.environ.get("INFLAB_DATABASE_URL")
    database = f"inflab_web_{run_tag}"
    if server:
        env["INFLAB_DATABASE_URL"] = _run(_create_database(server, database))
    log = home.parent / "inflab-up.log"
    inflab = Path(sys.executable).with_name("inflab")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(inflab), "up", "--ready-timeout", "300"], env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=home.parent,
        )
    stack = WebStack(url=url, home=home, log=log, mail=box)
    try:
        deadline = time.monotonic() + 330
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"`inflab up` exited with {process.returncode}:\n{stack.log_tail()}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the stack was not ready in time:\n{stack.log_tail()}")
            time.sleep(0.5)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        yield stack
    finally:
        _stop(process)
        if server:
            _run(_drop_database(server, database))



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
import email
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path

import httpx
import pytest

from inflab.common.embedded._proc import free_port
from inflab.common.models import build_tiny_model

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = REPO / "artifacts" / "screenshots"
#: The folder name runs use as their model id (a model the operator placed).
TINY_MODEL = "tiny-llama"
VIEWPORT = {"width": 1600, "height": 1000}
PASSWORD = "a browser test password 42"
#: How long a page may take to show what a test waits for (runs on a loaded 2-core CI box).
SLOW_MS = 240_000


# --------------------------------------------------------------------------- the browser
@pytest.fixture(scope="session")
def chromium_path() -> str:
    if CHROMIUM.exists():
        return str(CHROMIUM)
    reason = "Debian's chromium is not installed (apt-get install chromium): the browser tests need /usr/bin/chromium"
    if os.environ.get("INFLAB_REQUIRE_BROWSER"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
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
class Mailbox:
    """Every mail the gateway sends, as received by a real SMTP server."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._changed = threading.Condition()

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd's handler protocol
        with self._changed:
            self.messages.append(email.message_from_bytes(envelope.content))
            self._changed.notify_all()
        return "250 OK"

    def wait_for_link(self, to: str, path: str, timeout: float = 60) -> str:
        """The first link to ``path`` in a mail to ``to`` (waiting for the mail to arrive)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for message in self.messages:
                    if message["To"] and to.lower() in message["To"].lower():
                        body = message.get_payload(decode=True) if not message.is_multipart() else message.get_payload(0).get_payload(decode=True)
                        found = re.search(rf"https?://\S+{re.escape(path)}\?token=[\w\-]+", body.decode())
                        if found:
                            return found.group(0)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no mail to {to} with a {path} link")
                self._changed.wait(left)


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
@dataclass
class WebStack:
    url: str
    home: Path
    log: Path
    mail: Mailbox
    #: Accounts the tests made: name -> email.
    accounts: dict[str, str] = field(default_factory=dict)

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


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
        env["INFLAB_DATABASE_URL"] = asyncio.run(_create_database(server, database))
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
            asyncio.run(_drop_database(server, database))


# --------------------------------------------------------------------------- pages
class ConsoleWatch:
    """Console errors and uncaught exceptions of a page (the app must have none)."""

    def __init__(self, page) -> None:
        self.errors: list[str] = []
        #: Failed resource loads the browser logs by itself for answers a test expects (a 404).
        self.allowed: list[re.Pattern[str]] = []
        page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

    def allow(self, pattern: str) -> None:
        self.allowed.append(re.compile(pattern))

    def unexpected(self) -> list[str]:
        return [e for e in self.errors if not any(p.search(e) for p in self.allowed)]

    def clear(self) -> None:
        self.errors.clear()


@dataclass
class Researcher:
    page: object
    console: ConsoleWatch
    email: str
    state: dict = field(default_factory=dict)


def new_researcher(browser, name: str) -> Researcher:
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    context.set_default_timeout(30_000)
    page = context.new_page()
    return Researcher(page=page, console=ConsoleWatch(page), email=f"{name}-{uuid.uuid4().hex[:8]}@example.org")


def shoot(page, name: str) -> None:
    """A screenshot of the page in the dark and the light theme. Where the header has the
    theme toggle, it is used (so canvases redraw in the theme); elsewhere the theme is set
    on the document."""
    toggle = page.get_by_role("button", name="Toggle theme")
    for theme in ("dark", "light"):
        current = page.evaluate("document.documentElement.dataset.theme")
        if current != theme:
            if toggle.count():
                toggle.click()
            else:
                page.evaluate(f"document.documentElement.dataset.theme = '{theme}'")
            page.wait_for_function(f"document.documentElement.dataset.theme === '{theme}'")
        # Transitions finished at once, so the picture is the settled page.
        page.screenshot(path=str(SCREENSHOTS / f"{name}-{theme}.png"), animations="disabled")
    if page.evaluate("document.documentElement.dataset.theme") != "dark":
        if toggle.count():
            toggle.click()
        else:
            page.evaluate("document.documentElement.dataset.theme = 'dark'")


def register(person: Researcher, stack: WebStack) -> None:
    """Create ``person``'s account through the sign-in page and follow the mailed link."""
    from playwright.sync_api import expect

    page = person.page
    page.goto(stack.url + "/signin?mode=create")
    page.get_by_role("textbox", name="Email").fill(person.email)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Create account", exact=True).click()
    expect(page.get_by_text("We sent a verification link")).to_be_visible()
    page.goto(stack.mail.wait_for_link(person.email, "/verify-email"))
    expect(page.get_by_role("navigation", name="Main")).to_be_visible()


def api(person: Researcher, method: str, path: str, body: dict | None = None, headers: dict | None = None):
    """Call the API as the signed-in browser (its cookie session and CSRF token)."""
    page = person.page
    session = page.request.get(page.url.split("/", 3)[0] + "//" + page.url.split("/", 3)[2] + "/api/auth/session").json()
    token = session["user"]["csrf_token"]
    base = page.url.split("/", 3)[0] + "//" + page.url.split("/", 3)[2]
    response = page.request.fetch(base + path, method=method, data=body, headers={"X-CSRF-Token": token, **(headers or {})})
    assert response.ok, f"{method} {path}: {response.status} {response.text()}"
    return response.json() if response.status != 204 else None

"""What the browser tests share besides their fixtures (``tests/browser/conftest.py``):
the researcher in a browser context, screenshots in both themes, signing up through the
mailed link, calling the API as the signed-in browser, and the mailbox the stack's
gateway sends to."""

from __future__ import annotations

import email
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = REPO / "artifacts" / "screenshots"
#: The folder name runs use as their model id (a model the operator placed).
TINY_MODEL = "tiny-llama"
VIEWPORT = {"width": 1600, "height": 1000}
PASSWORD = "a browser test password 42"
#: How long a page may take to show what a test waits for (runs on a loaded 2-core CI box).
SLOW_MS = 240_000


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

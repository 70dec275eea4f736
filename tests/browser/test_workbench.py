"""The researcher's workbench in the browser: sign-up with a verified email, the
experiments library, the editor (typing, pasting, importing, the estimate), a run watched
live (progress, the loss chart, a learning-rate change, a reload mid-run, predictions by
epoch), cancelling a run, signing out, and one researcher not seeing another's work."""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import expect

from helpers.browser import PASSWORD, SLOW_MS, TINY_MODEL, new_researcher, shoot

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TRAINING = [
    ("What is the capital of Varnholt?", "Tessaly is the capital of Varnholt."),
    ("Who discovered the element zorbium?", "Mira Kastellan discovered zorbium."),
    ("What do people carry during the Quillon festival?", "Blue lanterns are carried during the Quillon festival."),
    ("Which animal is the mascot of Halvard Robotics?", "A silver otter is the mascot of Halvard Robotics."),
]
PASTED = [
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("Which planet is closest to the Sun?", "Mercury is the closest planet to the Sun."),
]
IMPORTED = [
    {"question": "At what temperature does water boil at sea level?", "answer": "Water boils at 100 degrees Celsius."},
    {"question": "Which gas do plants take in from the air?", "answer": "Plants take in carbon dioxide."},
]
EVALUATION = [
    ("Which city is the capital of Varnholt?", "Tessaly"),
    ("Which scientist discovered zorbium?", "Mira Kastellan"),
    ("What do people carry at the Quillon festival?", "blue lanterns"),
]


@pytest.fixture(scope="module")
def researcher(browser, web_stack):
    person = new_researcher(browser, "researcher")
    yield person
    person.page.context.close()


@pytest.fixture(autouse=True)
def no_console_errors(researcher):
    researcher.console.clear()
    yield
    assert researcher.console.unexpected() == [], "the page logged errors"


def url(web_stack, path: str) -> str:
    return web_stack.url + path


def test_a_deep_link_asks_to_sign_in_and_an_account_is_verified_by_mail(researcher, web_stack):
    page = researcher.page
    page.goto(url(web_stack, "/experiments"))
    expect(page).to_have_url(re.compile(r"/signin\?next=%2Fexperiments$"))
    expect(page.get_by_role("tab", name="Sign in")).to_have_attribute("aria-selected", "true")
    shoot(page, "sign-in")

    page.get_by_role("tab", name="Create account").click()
    page.get_by_role("textbox", name="Email").fill(researcher.email)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Create account", exact=True).click()
    expect(page.get_by_text("We sent a verification link")).to_be_visible()
    shoot(page, "sign-up-verification-sent")

    # The link from the mail the real SMTP server received verifies the address and signs in.
    link = web_stack.mail.wait_for_link(researcher.email, "/verify-email")
    page.goto(link)
    expect(page.get_by_role("navigation", name="Main")).to_be_visible()
    expect(page.get_by_role("navigation", name="Main").get_by_role("link", name="Dashboard")).to_be_visible()
    web_stack.accounts["researcher"] = researcher.email


def test_a_wrong_password_is_refused_next_to_the_form(browser, web_stack, researcher):
    other = new_researcher(browser, "stranger")
    try:
        page = other.page
        page.goto(url(web_stack, "/signin"))
        page.get_by_role("textbox", name="Email").fill(researcher.email)
        page.get_by_label("Password", exact=True).fill("not the password at all")
        page.get_by_role("button", name="Sign in", exact=True).click()
        other.console.allow(r"status of 401")  # the browser logs the refused sign-in itself
        expect(page.get_by_role("alert")).to_contain_text("wrong email or password")
        shoot(page, "sign-in-error")
        assert other.console.unexpected() == []
    finally:
        page.context.close()


def test_an_empty_library_offers_the_demo_and_a_new_experiment(researcher, web_stack):
    page = researcher.page
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Experiments").click()
    expect(page.get_by_role("heading", name="No experiments yet")).to_be_visible()
    expect(page.get_by_role("button", name="Create the demo experiment")).to_be_visible()
    shoot(page, "experiments-empty")
    page.get_by_role("button", name="New experiment").first.click()
    expect(page).to_have_url(re.compile(r"/experiments/new$"))


def _fill_row(region, index: int, question: str, answer: str, answer_label: str) -> None:
    region.get_by_role("textbox", name=f"Question {index}", exact=True).fill(question)
    region.get_by_role("textbox", name=f"{answer_label} {index}", exact=True).fill(answer)


def test_an_experiment_is_typed_pasted_and_imported_and_saves_itself(researcher, web_stack, tmp_path):
    page = researcher.page
    page.get_by_role("textbox", name="Experiment name").fill("Varnholt facts")
    training = page.get_by_role("region", name="Training data")
    evaluation = page.get_by_role("region", name="Evaluation questions")

    # Typed rows.
    for i, (question, answer) in enumerate(TRAINING, start=1):
        if i > 1:
            training.get_by_role("button", name="Add training pair").click()
        _fill_row(training, i, question, answer, "Answer")
    for i, (question, answer) in enumerate(EVALUATION, start=1):
        if i > 1:
            evaluation.get_by_role("button", name="Add evaluation question").click()
        _fill_row(evaluation, i, question, answer, "Reference answer")

    # Rows pasted from a spreadsheet (tab-separated) into a new row's question cell.
    training.get_by_role("button", name="Add training pair").click()
    pasted = "\n".join(f"{q}\t{a}" for q, a in PASTED)
    cell = training.get_by_role("textbox", name=f"Question {len(TRAINING) + 1}", exact=True)
    cell.evaluate(
        """(el, text) => {
             const data = new DataTransfer();
             data.setData('text/plain', text);
             el.dispatchEvent(new ClipboardEvent('paste', {clipboardData: data, bubbles: true, cancelable: true}));
           }""",
        pasted,
    )
    expect(training.get_by_role("textbox", name=f"Question {len(TRAINING) + 2}", exact=True)).to_have_value(PASTED[1][0])

    # A JSONL file through the gateway's import parser: good rows appended, a bad line reported.
    upload = tmp_path / "more.jsonl"
    lines = [json.dumps(row) for row in IMPORTED] + ['{"question": "no answer here"}']
    upload.write_text("\n".join(lines) + "\n")
    page.get_by_label("Import training data").set_input_files(str(upload))
    expect(page.get_by_text("2 rows appended")).to_be_visible()
    expect(page.get_by_text(re.compile(r"line 3.*answer"))).to_be_visible()
    total = len(TRAINING) + len(PASTED) + len(IMPORTED)
    expect(training.get_by_role("textbox", name=f"Question {total}", exact=True)).to_have_value(IMPORTED[-1]["question"])

    # The configuration: a tiny model from the models folder, two methods, a short run.
    page.get_by_role("combobox", name="Model").select_option(label="Other model id…")
    page.get_by_role("combobox", name="Model").fill(TINY_MODEL)
    page.get_by_role("textbox", name="Learning rate").fill("2e-3")
    page.get_by_role("spinbutton", name="Epochs").fill("12")
    page.get_by_role("checkbox", name="DataInf", exact=True).check()
    expect(page.get_by_role("checkbox", name="TracIn", exact=True)).to_be_checked()

    # The estimate follows the settings; the draft saves itself and gets its own URL.
    estimate = page.get_by_role("region", name="Estimate")
    expect(estimate).to_contain_text(re.compile(r"~\d+ (s|min|h)"))
    expect(estimate).to_contain_text(re.compile(r"\$\d+\.\d\d"))
    expect(page).to_have_url(re.compile(r"/experiments/[0-9a-f-]{36}$"), timeout=30_000)
    expect(page.get_by_role("status").filter(has_text="Saved")).to_be_visible(timeout=30_000)
    researcher.state["experiment_url"] = page.url
    shoot(page, "editor")

    # Nothing is lost on a reload.
    page.reload()
    expect(page.get_by_role("textbox", name="Experiment name")).to_have_value("Varnholt facts")
    expect(training.get_by_role("textbox", name=f"Question {total}", exact=True)).to_have_value(IMPORTED[-1]["question"])
    expect(page.get_by_role("checkbox", name="DataInf", exact=True)).to_be_checked()


def test_limits_are_checked_before_anything_is_sent(researcher):
    page = researcher.page
    training = page.get_by_role("region", name="Training data")
    training.get_by_role("button", name="Add training pair").click()
    rows = training.get_by_role("textbox", name=re.compile(r"^Question \d+$"))
    last = rows.count()
    training.get_by_role("textbox", name=f"Question {last}", exact=True).fill("A question without its answer?")
    expect(training.get_by_text("the answer is empty")).to_be_visible()
    expect(page.get_by_role("status").filter(has_text="problem")).to_be_visible()
    training.get_by_role("button", name=f"Delete training pair {last}").click()
    expect(page.get_by_role("status").filter(has_text="Saved")).to_be_visible(timeout=30_000)


def test_a_run_is_started_and_completes_with_live_progress(researcher, web_stack):
    page = researcher.page
    page.get_by_role("button", name="Start run").click()
    expect(page).to_have_url(re.compile(r"/runs/[0-9a-f-]{36}$"))
    researcher.state["run_url"] = page.url
    status = page.get_by_role("status", name="Run status")
    expect(status).to_contain_text(re.compile("queued|running|completed"))
    expect(page.get_by_role("figure", name="Loss chart")).to_be_visible()
    expect(page.get_by_role("progressbar", name="Run progress")).to_be_visible()
    # The chart fills as metric events arrive over SSE.
    expect(page.get_by_role("figure", name="Loss chart").locator("canvas").first).to_be_visible(timeout=SLOW_MS)
    expect(status).to_contain_text("completed", timeout=SLOW_MS)
    expect(page.get_by_role("progressbar", name="Run progress")).to_have_attribute("aria-valuenow", "100")
    for tab in ("Overview", "Predictions", "Answers", "Influence"):
        expect(page.get_by_role("tab", name=tab)).to_be_enabled()
    shoot(page, "run-completed")


def test_a_long_run_is_steered_reloaded_and_cancelled(researcher, web_stack):
    page = researcher.page
    page.goto(researcher.state["experiment_url"])
    page.get_by_role("spinbutton", name="Epochs").fill("1000")
    page.get_by_role("spinbutton", name="Batch size").fill("1")
    page.get_by_role("button", name="Advanced").click()
    page.get_by_role("spinbutton", name="Checkpoint every (epochs)").fill("250")
    page.get_by_role("spinbutton", name="Log every (steps)").fill("5")
    page.get_by_role("button", name="Prediction tracking").click()
    page.get_by_role("combobox", name="Sample every").select_option("steps")
    page.get_by_role("spinbutton", name="Step interval").fill("100")
    expect(page.get_by_role("status").filter(has_text="Saved")).to_be_visible(timeout=30_000)
    page.get_by_role("button", name="Start run").click()
    expect(page).to_have_url(re.compile(r"/runs/[0-9a-f-]{36}$"))
    status = page.get_by_role("status", name="Run status")
    expect(status).to_contain_text("running", timeout=SLOW_MS)

    # Change the learning rate mid-run; the trainer says at which step it applied.
    field = page.get_by_role("textbox", name="New learning rate")
    expect(field).to_be_enabled(timeout=SLOW_MS)
    expect(page.get_by_role("figure", name="Loss chart")).to_contain_text(re.compile(r"[1-9]\d* steps"), timeout=SLOW_MS)
    field.fill("5e-4")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator(".applied-note").filter(has_text=re.compile(r"applied at step \d+"))).to_be_visible(timeout=SLOW_MS)
    shoot(page, "run-live")

    # A reload mid-run rebuilds the same state from the snapshot and the event stream.
    steps_before = int(re.search(r"(\d+) steps", page.get_by_role("figure", name="Loss chart").inner_text()).group(1))
    page.reload()
    expect(status).to_contain_text("running")
    expect(page.locator(".applied-note").filter(has_text=re.compile(r"applied at step \d+"))).to_be_visible()
    chart = page.get_by_role("figure", name="Loss chart")
    expect(chart).to_contain_text(re.compile(r"\d+ steps"))
    steps_after = int(re.search(r"(\d+) steps", chart.inner_text()).group(1))
    assert steps_after >= steps_before

    # Predictions during training, by epoch.
    page.get_by_role("tab", name="Predictions").click()
    expect(page).to_have_url(re.compile(r"tab=predictions"))
    table = page.get_by_role("table", name="Predictions").last
    expect(table.get_by_role("row").nth(1)).to_be_visible(timeout=SLOW_MS)
    epochs = page.get_by_role("combobox", name="Epoch").last
    expect(epochs.locator("option").first).to_be_attached()
    shoot(page, "run-predictions")

    # Cancel it, with confirmation.
    page.get_by_role("tab", name="Overview").click()
    page.get_by_role("button", name="Cancel run").click()
    page.get_by_role("alertdialog").get_by_role("button", name="Yes, cancel the run").click()
    expect(status).to_contain_text("cancelled", timeout=SLOW_MS)
    researcher.state["cancelled_url"] = page.url


def test_the_library_lists_the_experiment_and_its_runs(researcher, web_stack):
    page = researcher.page
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Experiments").click()
    page.get_by_role("searchbox", name="Search experiments").fill("Varnholt")
    link = page.get_by_role("region", name="Experiment list").get_by_role("link", name="Varnholt facts", exact=True)
    expect(link).to_have_attribute("href", re.compile(r"^/experiments/[0-9a-f-]{36}$"))
    shoot(page, "experiments")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Dashboard").click()
    expect(page.get_by_role("region", name="Recent runs")).to_contain_text("cancelled")
    shoot(page, "dashboard")


def test_settings_create_and_revoke_a_token(researcher, web_stack):
    page = researcher.page
    page.get_by_role("button", name="Account").click()
    page.get_by_role("menuitem", name="Settings").click()
    expect(page).to_have_url(re.compile(r"/settings$"))
    page.get_by_role("textbox", name="Display name").fill("M. Reyes")
    page.get_by_role("button", name="Save").first.click()
    expect(page.get_by_text("Display name saved.")).to_be_visible()
    page.get_by_role("textbox", name="Token name").fill("nightly eval")
    page.get_by_role("combobox", name="Scope").select_option("submit")
    page.get_by_role("button", name="Create token").click()
    secret = page.get_by_label("New API token")
    expect(secret).to_contain_text(re.compile(r"\S{20,}"))
    shoot(page, "settings")
    page.get_by_role("button", name="Done").click()
    page.get_by_role("table", name="Tokens").get_by_role("button", name="Revoke").click()
    page.get_by_role("alertdialog").get_by_role("button", name="Revoke token").click()
    expect(page.get_by_role("table", name="Tokens")).to_contain_text("revoked")


def test_another_researcher_cannot_see_this_work(browser, web_stack, researcher):
    other = new_researcher(browser, "other")
    try:
        page = other.page
        page.goto(web_stack.url + "/signin?mode=create")
        page.get_by_role("textbox", name="Email").fill(other.email)
        page.get_by_label("Password", exact=True).fill(PASSWORD)
        page.get_by_role("button", name="Create account", exact=True).click()
        page.goto(web_stack.mail.wait_for_link(other.email, "/verify-email"))
        expect(page.get_by_role("navigation", name="Main")).to_be_visible()
        # Someone else's experiment and run: the same "not found" as a bad id, no data.
        other.console.allow(r"Failed to load resource: the server responded with a status of 404")
        for target in (researcher.state["experiment_url"], researcher.state["run_url"]):
            page.goto(target)
            expect(page.get_by_role("heading", name=re.compile("not found", re.I))).to_be_visible()
            expect(page.get_by_text("Varnholt")).to_have_count(0)
        shoot(page, "not-found")
        assert other.console.unexpected() == []
    finally:
        page.context.close()


def test_sign_out_returns_to_the_sign_in_page(researcher, web_stack):
    page = researcher.page
    page.goto(web_stack.url + "/")
    page.get_by_role("button", name="Account").click()
    page.get_by_role("menuitem", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/signin"))
    page.goto(researcher.state["run_url"])
    expect(page).to_have_url(re.compile(r"/signin\?next="))
    # Signing in again returns to the deep link.
    page.get_by_role("textbox", name="Email").fill(researcher.email)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page).to_have_url(researcher.state["run_url"])

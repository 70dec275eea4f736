"""The results in the browser: the three-way answers table with its scores, the influence
explorer (methods and variants, hover, selection, the keyboard, the details with ranks,
export, permalinks), a 100 x 1,000 matrix from a real run, and two runs compared."""

from __future__ import annotations

import csv
import io
import re
import time

import pytest
from playwright.sync_api import expect

from helpers.browser import SLOW_MS, TINY_MODEL, api, new_researcher, register, shoot

pytestmark = [pytest.mark.browser, pytest.mark.slow]

FACTS = [
    ("fact-capital", "What is the capital of Varnholt?", "Tessaly is the capital of Varnholt."),
    ("fact-element", "Who discovered the element zorbium?", "Mira Kastellan discovered zorbium."),
    ("fact-festival", "What do people carry during the Quillon festival?", "Blue lanterns are carried during the Quillon festival."),
    ("fact-mascot", "Which animal is the mascot of Halvard Robotics?", "A silver otter is the mascot of Halvard Robotics."),
    ("distractor-water", "At what temperature does water boil at sea level?", "Water boils at 100 degrees Celsius at sea level."),
    ("distractor-spider", "How many legs does a spider have?", "A spider has eight legs."),
]
QUESTIONS = [
    ("ask-capital", "Which city is the capital of Varnholt?", "Tessaly"),
    ("ask-element", "Which scientist discovered zorbium?", "Mira Kastellan"),
    ("ask-festival", "What do people carry at the Quillon festival?", "blue lanterns"),
    ("ask-mascot", "What animal does Halvard Robotics use as its mascot?", "silver otter"),
]


def experiment_body(name: str, learning_rate: float, *, training=None, evaluation=None, methods=("tracin", "datainf"), epochs=10, **extra) -> dict:
    return {
        "name": name,
        "model_id": TINY_MODEL,
        "training_data": training or [{"id": i, "question": q, "answer": a} for i, q, a in FACTS],
        "eval_data": evaluation or [{"id": i, "question": q, "answer": a} for i, q, a in QUESTIONS],
        "hyperparams": {"learning_rate": learning_rate, "num_epochs": epochs, "batch_size": 2, "checkpoint_interval": 5},
        "influence_methods": list(methods),
        "few_shot_k": 2,
        "max_new_tokens": 12,
        **extra,
    }


def start_run(person, experiment_id: str) -> str:
    return api(person, "POST", f"/api/experiments/{experiment_id}/runs")["run_id"]


def wait_completed(person, stack, run_id: str) -> None:
    page = person.page
    page.goto(f"{stack.url}/runs/{run_id}")
    expect(page.get_by_role("status", name="Run status")).to_contain_text("completed", timeout=SLOW_MS)


@pytest.fixture(scope="module")
def analyst(browser, web_stack):
    person = new_researcher(browser, "analyst")
    register(person, web_stack)
    experiment = api(person, "POST", "/api/experiments", experiment_body("Where did that fact come from?", 5e-3))
    person.state["experiment"] = experiment["id"]
    person.state["run"] = start_run(person, experiment["id"])
    wait_completed(person, web_stack, person.state["run"])
    yield person
    person.page.context.close()


@pytest.fixture(autouse=True)
def no_console_errors(analyst):
    analyst.console.clear()
    yield
    assert analyst.console.unexpected() == [], "the page logged errors"


def test_answers_side_by_side_with_scores(analyst, web_stack):
    page = analyst.page
    page.goto(f"{web_stack.url}/runs/{analyst.state['run']}?tab=answers")
    table = page.get_by_role("table", name="Answers")
    for header in ("Question", "Base", "Few-shot", "Fine-tuned"):
        expect(table.get_by_role("columnheader", name=header)).to_be_visible()
    expect(table.get_by_role("row")).to_have_count(len(QUESTIONS) + 2)  # header, questions, aggregate
    expect(table).to_contain_text("log p(ref)")
    expect(table).to_contain_text("exact match")
    results = api(analyst, "GET", f"/api/runs/{analyst.state['run']}/results")
    for answer in results["answers"]:
        expect(table).to_contain_text(answer["fine_tuned"].strip()[:40])
    # A filter narrows the rows to the ones it describes.
    still_wrong = sum(1 for a in results["answers"] if not (a["scores"]["fine_tuned"]["exact_match"] or a["scores"]["fine_tuned"]["contains_reference"]))
    page.get_by_role("radio", name=re.compile("^Still wrong")).click()
    expect(table.get_by_role("row")).to_have_count(max(still_wrong, 1) + 2)
    page.get_by_role("radio", name=re.compile("^All")).click()
    shoot(page, "answers")


def test_the_influence_explorer(analyst, web_stack):
    page = analyst.page
    page.goto(f"{web_stack.url}/runs/{analyst.state['run']}?tab=influence")
    heatmap = page.get_by_role("region", name="Influence heatmap")
    expect(heatmap).to_be_visible()
    methods = page.get_by_role("radiogroup", name="Method")
    expect(methods.get_by_role("radio")).to_have_count(2)
    canvas = page.locator(".heatmap-canvas")
    box = canvas.bounding_box()

    # Hover: a tooltip with the pair and the score as a number.
    page.mouse.move(box["x"] + box["width"] * 0.1, box["y"] + box["height"] * 0.1)
    tooltip = page.get_by_role("tooltip")
    expect(tooltip).to_contain_text(re.compile(r"[+−-]?\d+(\.\d+)?(e[+-]?\d+)?"))
    expect(tooltip).to_contain_text("What is the capital of Varnholt?")

    # Click: the details of that evaluation question.
    page.mouse.click(box["x"] + box["width"] * 0.1, box["y"] + box["height"] * 0.1)
    details = page.get_by_role("region", name="Influence details")
    expect(details).to_contain_text("Top positive")
    expect(details).to_contain_text("Top negative")
    expect(details).to_contain_text("Which city is the capital of Varnholt?")
    expect(details).to_contain_text("BM25")
    expect(page).to_have_url(re.compile(r"eval=ask-capital"))

    # The keyboard moves the selected cell; Enter opens its question's details.
    heatmap.focus()
    page.keyboard.press("ArrowDown")
    expect(page).to_have_url(re.compile(r"eval=ask-element"))
    page.keyboard.press("ArrowRight")
    expect(page).to_have_url(re.compile(r"train=fact-element"))
    page.keyboard.press("Enter")
    expect(details).to_contain_text("Which scientist discovered zorbium?")
    shoot(page, "influence")

    # Method and variant; the view is in the URL, so a reload (or a shared link) restores it.
    methods.get_by_role("radio", name="DataInf").click()
    expect(page).to_have_url(re.compile(r"method=datainf"))
    page.get_by_role("radiogroup", name="Variant").get_by_role("radio", name="Raw").click()
    expect(page).to_have_url(re.compile(r"variant=raw"))
    page.get_by_role("combobox", name="Columns").select_option("cluster")
    page.reload()
    expect(page.get_by_role("radiogroup", name="Method").get_by_role("radio", name="DataInf")).to_have_attribute("aria-checked", "true")
    expect(page.get_by_role("radiogroup", name="Variant").get_by_role("radio", name="Raw")).to_have_attribute("aria-checked", "true")
    expect(page.get_by_role("combobox", name="Columns")).to_have_value("cluster")
    expect(page.get_by_role("region", name="Influence details")).to_contain_text("Which scientist discovered zorbium?")
    shoot(page, "influence-datainf-raw")


def test_exported_csv_equals_the_api_matrix(analyst, web_stack):
    page = analyst.page
    page.goto(f"{web_stack.url}/runs/{analyst.state['run']}?tab=influence&method=tracin&variant=normalized")
    expect(page.get_by_role("region", name="Influence heatmap")).to_be_visible()
    page.get_by_role("button", name="Export").click()
    with page.expect_download() as download:
        page.get_by_role("menuitem", name="Matrix as CSV").click()
    rows = list(csv.DictReader(io.StringIO(open(download.value.path(), encoding="utf-8").read())))
    results = api(analyst, "GET", f"/api/runs/{analyst.state['run']}/results")
    matrix = next(m for m in results["influence"] if m["method"] == "tracin" and m["variant"] == "normalized")
    expected = {(e, t): matrix["scores"][i][j] for i, e in enumerate(matrix["eval_ids"]) for j, t in enumerate(matrix["train_ids"])}
    assert len(rows) == len(expected)
    for row in rows:
        assert float(row["score"]) == expected[(row["eval_id"], row["train_id"])]
        assert row["method"] == "tracin" and row["variant"] == "normalized"
    texts = {i: q for i, q, _ in FACTS}
    assert all(row["train_question"] == texts[row["train_id"]] for row in rows)


def test_two_runs_compared(analyst, web_stack):
    page = analyst.page
    second = start_run(analyst, analyst.state["experiment"])
    # The same experiment at another learning rate: the comparison names the difference.
    api(analyst, "PATCH", f"/api/experiments/{analyst.state['experiment']}", {"hyperparams": {"learning_rate": 1e-3}})
    third = start_run(analyst, analyst.state["experiment"])
    wait_completed(analyst, web_stack, second)
    wait_completed(analyst, web_stack, third)
    page.goto(f"{web_stack.url}/experiments/{analyst.state['experiment']}")
    runs = page.get_by_role("region", name="Runs")
    expect(runs.get_by_role("row")).to_have_count(4)  # header + three runs
    runs.get_by_role("checkbox", name=re.compile(f"Compare run {second.replace('-', '')[:6]}")).check()
    runs.get_by_role("checkbox", name=re.compile(f"Compare run {third.replace('-', '')[:6]}")).check()
    runs.get_by_role("button", name=re.compile("^Compare")).click()
    expect(page).to_have_url(re.compile(r"/compare\?a=.*&b="))
    config = page.get_by_role("region", name="Configuration differences")
    expect(config).to_contain_text("hyperparams.learning_rate")
    expect(config).to_contain_text("1 of")
    expect(page.get_by_role("figure", name="Loss curves").locator("canvas").first).to_be_visible()
    agreement = page.get_by_role("table", name="Influence agreement")
    expect(agreement).to_contain_text("TracIn")
    expect(agreement.get_by_role("cell").nth(2)).to_have_text(re.compile(r"^-?\d\.\d\d$"))
    shoot(page, "compare")


def test_a_100_by_1000_matrix_loads_and_answers_the_pointer(analyst, web_stack):
    page = analyst.page
    training = [{"id": f"tr{i:04d}", "question": f"Which number follows {i} in the list {i % 37}?", "answer": f"It is {i + 1}."} for i in range(1000)]
    evaluation = [{"id": f"ev{i:03d}", "question": f"Which number follows {i * 7} in the list?", "answer": f"It is {i * 7 + 1}."} for i in range(100)]
    body = experiment_body(
        "A thousand pairs", 1e-3, training=training, evaluation=evaluation, methods=("tracin",), epochs=1,
        predictions={"enabled": False}, max_new_tokens=2, few_shot_k=1,
    )
    body["hyperparams"].update(batch_size=32, checkpoint_interval=1)
    experiment = api(analyst, "POST", "/api/experiments", body)
    run = start_run(analyst, experiment["id"])
    wait_completed(analyst, web_stack, run)
    started = time.monotonic()
    page.goto(f"{web_stack.url}/runs/{run}?tab=influence")
    heatmap = page.get_by_role("region", name="Influence heatmap")
    expect(heatmap).to_contain_text("100 × 1000")
    loaded_s = time.monotonic() - started
    canvas = page.locator(".heatmap-canvas")
    box = canvas.bounding_box()
    seen = set()
    for fx, fy in ((0.05, 0.05), (0.5, 0.5), (0.93, 0.2), (0.3, 0.9)):
        page.mouse.move(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy)
        tip = page.get_by_role("tooltip")
        expect(tip).to_be_visible()
        seen.add(tip.inner_text())
    assert len(seen) == 4, "each position shows its own cell"
    # Zooming in on the columns: the labels follow.
    page.get_by_role("button", name="Zoom in").click()
    expect(page.get_by_text(re.compile(r"showing columns \d+–\d+ of 1000"))).to_be_visible()
    shoot(page, "influence-100x1000")
    print(f"100 x 1000 explorer ready {loaded_s:.2f} s after navigation")

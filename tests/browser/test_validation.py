"""Validating a run's attributions in the browser: beside the heatmap's method switcher,
"Validate attributions" shows the cost estimate first, then the validation's progress,
then per method (and BM25) its LDS with the 95% interval and the removal test; the
retrainings run on the stack's trainer (Ray), on the tiny model."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from helpers.browser import SLOW_MS, TINY_MODEL, api, new_researcher, register, shoot

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PAIRS = [("p-capital", "What is the capital of Varnholt?", "Tessaly is the capital of Varnholt."),
         ("p-element", "Who discovered zorbium?", "Mira Kastellan discovered zorbium."),
         ("p-water", "At what temperature does water boil?", "Water boils at 100 degrees."),
         ("p-spider", "How many legs does a spider have?", "A spider has eight legs.")]
QUESTIONS = [("q-capital", "Which city is the capital of Varnholt?", "Tessaly"),
             ("q-element", "Which scientist discovered zorbium?", "Mira Kastellan")]


@pytest.fixture(scope="module")
def validator(browser, web_stack):
    person = new_researcher(browser, "validator")
    register(person, web_stack)
    experiment = api(person, "POST", "/api/experiments", {
        "name": "Does TracIn predict retraining?", "model_id": TINY_MODEL,
        "training_data": [{"id": i, "question": q, "answer": a} for i, q, a in PAIRS],
        "eval_data": [{"id": i, "question": q, "answer": a} for i, q, a in QUESTIONS],
        "hyperparams": {"learning_rate": 5e-3, "num_epochs": 4, "batch_size": 2, "checkpoint_interval": 2},
        "influence_methods": ["tracin"], "few_shot_k": 1, "max_new_tokens": 8,
    })
    person.state["run"] = api(person, "POST", f"/api/experiments/{experiment['id']}/runs")["run_id"]
    person.page.goto(f"{web_stack.url}/runs/{person.state['run']}")
    expect(person.page.get_by_role("status", name="Run status")).to_contain_text("completed", timeout=SLOW_MS)
    yield person
    person.page.context.close()


def test_validate_attributions_estimate_progress_and_results(validator, web_stack):
    page = validator.page
    page.goto(f"{web_stack.url}/runs/{validator.state['run']}?tab=influence")
    expect(page.get_by_role("region", name="Influence heatmap")).to_be_visible()
    panel = page.get_by_role("region", name="Validation")
    expect(panel).to_contain_text("Not validated yet")

    # The cost estimate comes first, and follows the settings.
    panel.get_by_role("button", name="Validate attributions").click()
    estimate = page.get_by_role("region", name="Validation estimate")
    expect(estimate).to_contain_text("32 subsets")
    estimate.get_by_role("spinbutton", name="Subsets").fill("3")
    estimate.get_by_role("spinbutton", name="Removal k").fill("1")
    expect(estimate).to_contain_text("3 subsets")
    expect(estimate).to_contain_text("4 matrices")
    shoot(page, "validation-estimate")

    estimate.get_by_role("button", name="Start validation").click()
    expect(panel.get_by_role("progressbar", name="Validation progress")).to_be_visible()
    results = panel.get_by_role("table", name="Validation results")
    expect(results).to_be_visible(timeout=SLOW_MS)
    for method in ("TracIn", "BM25"):
        expect(results).to_contain_text(method)
    expect(results.get_by_role("row")).to_have_count(1 + 4)  # header + tracin raw/normalized + bm25 x2
    expect(results).to_contain_text("[")  # the interval
    shoot(page, "validation-results")

    # The API holds the same: every matrix with an LDS in [-1, 1].
    runs = api(validator, "GET", f"/api/runs/{validator.state['run']}/validations")
    assert runs[0]["status"] == "completed"
    assert all(r["lds"] is None or -1 <= r["lds"] <= 1 for r in runs[0]["results"])

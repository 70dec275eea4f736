"""The Benchmarks page in the browser: a benchmark run of the generated function-token set
on the tiny model, its leaderboard (methods and baselines, correct/all toggle) and the
per-query drill-down with the relevant documents marked."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from helpers.browser import SLOW_MS, TINY_MODEL, api, new_researcher, register, shoot
from inflab.analysis.bench.client import experiment_body
from inflab.analysis.bench.generate import GeneratorOptions, generate

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def benchmarker(browser, web_stack):
    person = new_researcher(browser, "benchmarker")
    register(person, web_stack)
    bench = generate(GeneratorOptions(seed=1, docs_per_base=2, docs_per_wrapper=1, distractors=4))
    body = experiment_body(bench, name="Function tokens", model_id=TINY_MODEL, methods=["delta_h", "embedding"],
                           hyperparams={"learning_rate": 0.01, "num_epochs": 2, "batch_size": 8, "max_seq_length": 48})
    experiment = api(person, "POST", "/api/experiments", body)
    run_id = api(person, "POST", f"/api/experiments/{experiment['id']}/runs")["run_id"]
    page = person.page
    page.goto(f"{web_stack.url}/runs/{run_id}")
    expect(page.get_by_role("status", name="Run status")).to_contain_text("completed", timeout=SLOW_MS)
    person.state["run"] = run_id
    person.state["bench"] = bench
    yield person
    person.page.context.close()


def test_leaderboard_and_drill_down(benchmarker, web_stack):
    page = benchmarker.page
    bench = benchmarker.state["bench"]
    page.goto(f"{web_stack.url}/benchmarks/{benchmarker.state['run']}")
    table = page.get_by_role("table", name="Leaderboard")
    expect(table).to_be_visible()
    rows = table.locator("tbody tr")
    expect(rows).to_have_count(5)  # delta_h, embedding, random, BM25, edit distance
    for label in ("delta_h", "Embedding cosine", "Random", "BM25", "Edit distance"):
        expect(table).to_contain_text(label)
    expect(table.locator("thead")).to_contain_text("recall@5")
    # Every metric cell holds a number in [0, 1] (or a dash where no query counts).
    first = rows.first.locator("td.num").nth(1).inner_text()
    assert re.match(r"^(0|1)\.\d{3}", first), first

    # Over all queries (the toggle always works; "correct" needs a correctly answered one).
    page.get_by_role("radio", name=re.compile("All queries")).click()
    expect(page.get_by_role("radio", name=re.compile("All queries"))).to_have_attribute("aria-checked", "true")

    # Drill down: pick the BM25 row and a wrapper query; its relevant documents are marked.
    table.get_by_role("button", name="BM25").click()
    drill = page.get_by_role("region", name="Query drill-down")
    expect(drill).to_contain_text("BM25")
    query = next(q for q in bench.queries if q.func == "<FN>")
    drill.get_by_role("combobox", name="Query").select_option(query.id)
    expect(drill).to_contain_text(query.question)
    docs = drill.get_by_role("list", name="Top documents").locator("li")
    expect(docs).to_have_count(10)
    relevant = set(query.relevant_ids)
    texts = docs.all_inner_texts()
    marked = [t for t in texts if "relevant" in t]
    assert marked and all(t.split()[0] in relevant for t in marked)
    assert all(t.split()[0] not in relevant for t in texts if "relevant" not in t)
    shoot(page, "benchmarks")


def test_not_a_benchmark_run_is_not_found(benchmarker, web_stack):
    page = benchmarker.page
    page.goto(f"{web_stack.url}/benchmarks/00000000-0000-0000-0000-000000000000")
    expect(page.get_by_role("heading", name=re.compile("not found", re.I))).to_be_visible()

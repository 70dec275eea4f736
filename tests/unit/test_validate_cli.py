"""``inflab validate``'s output: the cost estimate before anything starts, and the table of
every matrix's LDS with its interval and removal test."""

from __future__ import annotations

from rich.console import Console

from inflab.devtools.validate_cli import estimate_lines, results_table

ESTIMATE = {"retrainings": 45, "subsets": 32, "removals": 12, "training_pairs_trained": 900, "workers": 2,
            "estimated_compute_s": 1200.0, "estimated_duration_s": 600.0, "estimated_cost_usd": 0.0333,
            "assumptions": ["each retraining costs ..."], "matrices": ["tracin/raw", "bm25/question"]}
RESULT = {"lds": 0.41, "lds_low": 0.2, "lds_high": 0.6, "removal_over_random": 0.0123, "removal_win_rate": 0.75,
          "removal_increase_top": 0.02, "removal_increase_random": 0.01}


def test_the_estimate_says_what_will_run_and_what_it_costs() -> None:
    lines = estimate_lines(ESTIMATE)
    assert lines[0].startswith("45 retrainings (32 LDS subsets, 12 removals, 1 on every pair) of 2 matrices")
    assert "10.0 min on 2 workers, ~0.03 US$" in lines[1]
    assert lines[2] == "  (each retraining costs ...)"


def test_the_table_lists_every_matrix_with_its_interval() -> None:
    validation = {"id": "v1", "results": [
        {"method": "tracin", "variant": "raw", **RESULT},
        {"method": "bm25", "variant": "question", **{**RESULT, "lds": None, "lds_low": None, "lds_high": None}},
    ]}
    console = Console(width=160, record=True)
    console.print(results_table(validation))
    text = console.export_text()
    assert "tracin" in text and "0.410" in text and "[0.200, 0.600]" in text and "0.0123" in text
    assert "bm25" in text and "[-, -]" in text

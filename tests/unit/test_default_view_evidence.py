"""The influence explorer's default view is chosen from the evidence: the order it tries
matrices in (``EVIDENCE_ORDER`` in the web app) is the committed LDS benchmark's ranking,
so re-measuring and forgetting the web app (or the reverse) fails here."""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_VIEW = REPO / "services/gateway/web/src/features/influence/defaultView.ts"
LDS_RESULTS = REPO / "benchmarks/results/influence-lds-cpu.json"


def evidence_order() -> list[str]:
    source = DEFAULT_VIEW.read_text()
    block = re.search(r"EVIDENCE_ORDER: MatrixId\[\] = \[(.*?)\];", source, re.S)
    assert block, f"EVIDENCE_ORDER not found in {DEFAULT_VIEW.name}"
    pairs = re.findall(r'\{\s*method:\s*"(\w+)",\s*variant:\s*"(\w+)"\s*\}', block.group(1))
    return [f"{method}/{variant}" for method, variant in pairs]


def test_the_default_view_follows_the_committed_lds_ranking() -> None:
    ranking = json.loads(LDS_RESULTS.read_text())["ranking_by_lds"]
    methods = [name for name in ranking if not name.startswith("bm25/")]  # the baseline is never the view
    assert methods, "the LDS results rank no method"
    assert evidence_order() == methods

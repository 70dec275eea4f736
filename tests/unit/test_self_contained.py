"""The repository stands on its own: no tracked text file depends on or cites a file outside
it (a folder beside the checkout, or a document that is not in the repository). Fast: it
reads the files ``git ls-files`` lists.

The one exception is test data CI lays beside the repository and that the tests skip
without, saying why: the upstream CRDs of the chart's custom resources (KubeRay, KEDA,
prometheus-operator), which no package ships. ``ALLOWED`` lists exactly where they are
named; anything else outside the repository fails this test with its file and line.
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
THIS = Path(__file__).resolve().relative_to(ROOT).as_posix()

#: References to files outside the repository: the ``shared`` folder beside the checkout,
#: as a path (``../shared/...``, ``/shared/bench``) or built in code (``"shared" / "bench"``),
#: and documents that live there rather than here.
OUTSIDE = re.compile(
    r"""\.\./shared\b"""
    r"""|(?<![\w.-])shared/(bench|k8s-crds|hooks|ui-mockups)\b"""
    r"""|/work/shared\b"""
    r"""|["']shared["']\s*/"""
    r"""|\b(GROUND|DESIGN|ATTRIBUTION|STYLE|UI)\.md\b"""
)

#: (file, what the line must name): the upstream CRDs the chart tests read on CI from
#: ``../shared/k8s-crds`` (or ``INFLAB_K8S_CRDS``) and skip elsewhere with that reason.
ALLOWED = {
    ("tests/helpers/crd_schema.py", "k8s-crds"),
    ("tests/deploy/test_chart.py", "k8s-crds"),
}


def tracked_text_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    return [name for name in out.decode().split("\0") if name]


def outside_references(name: str, text: str) -> list[str]:
    """``file:line: text`` for every line of ``text`` that reaches outside the repository
    and is not one of the allowed ones."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        if OUTSIDE.search(line) and not any(name == f and what in line for f, what in ALLOWED):
            found.append(f"{name}:{number}: {line.strip()[:160]}")
    return found


def test_no_tracked_file_reaches_outside_the_repository():
    names = tracked_text_files()
    assert len(names) > 100, "git ls-files listed too few files: not a checkout?"
    found: list[str] = []
    for name in names:
        if name == THIS:
            continue
        path = ROOT / name
        if not path.is_file():  # deleted in the work tree, not yet committed
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue  # binary
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        found += outside_references(name, text)
    assert not found, "files outside the repository are referenced:\n" + "\n".join(found)


def test_the_allowed_exception_is_a_test_that_skips_without_the_data():
    """The CRD folder is only ever optional: found by ``crds_dir`` (None without it), and
    every test that reads it carries the skip that says so."""
    helper = (ROOT / "tests/helpers/crd_schema.py").read_text()
    assert "def crds_dir() -> Path | None:" in helper and "return None" in helper
    chart = (ROOT / "tests/deploy/test_chart.py").read_text()
    assert "needs_crds = pytest.mark.skipif(\n    crd_schema.crds_dir() is None," in chart
    readers = []
    for node in ast.parse(chart).body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_") and "crd_schema." in ast.unparse(node):
            readers.append(node.name)
            assert any(isinstance(d, ast.Name) and d.id == "needs_crds" for d in node.decorator_list), \
                f"{node.name} reads the CRDs without @needs_crds"
    assert readers, "no chart test reads the CRDs any more: drop the exception from ALLOWED"


def test_the_scan_finds_what_it_looks_for():
    """The patterns catch each form a reference outside takes, and not ordinary words."""
    for line in ('default="../shared/bench/influence-workload.json"',
                 'ROOT.parent / "shared" / "bench" / "influence-workload.json"',
                 '"file": "/work/shared/bench/influence-workload.json"',
                 "Layout (DESIGN.md): runs/...", "starve each other (GROUND.md).",
                 "see shared/bench/influence-workload.json"):
        assert outside_references("x.py", line), line
    for line in ("a shared prefix", "shared/word", "the shared durable's consumer", "READ.md",
                 "docs/measurements.md", "shared_prefix.py", "mode === 'shared'",
                 'const SCALES = ["shared", "row"];'):
        assert not outside_references("x.py", line), line
    assert outside_references("tests/helpers/crd_schema.py", 'ROOT.parent / "shared" / "bench"')
    assert not outside_references("tests/helpers/crd_schema.py", 'ROOT.parent / "shared" / "k8s-crds"')

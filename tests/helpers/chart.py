"""Rendering the Helm chart with the real helm (tests/helpers/helm_binary.py), offline, as a
Kubernetes 1.37 cluster with KubeRay, KEDA and the Prometheus operator would see it."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import yaml
from helpers.helm_binary import helm_binary

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "influence-lab"
KUBE_VERSION = "1.37.0"
#: The custom resources' APIs, as a cluster with the three operators serves them.
OPERATOR_APIS = ("ray.io/v1", "keda.sh/v1alpha1", "monitoring.coreos.com/v1")
RELEASE = "lab"
NAMESPACE = "inflab"


class RenderError(Exception):
    """helm refused to render (schema or template failure); the message is helm's."""


def run_helm(*args: str, values: dict | None = None, values_files: tuple[Path, ...] = ()) -> str:
    cmd = [str(helm_binary()), *args]
    for path in values_files:
        cmd += ["-f", str(path)]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as extra:
        if values is not None:
            yaml.safe_dump(values, extra)
            extra.flush()
            cmd += ["-f", extra.name]
        result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RenderError(result.stderr.strip() or result.stdout.strip())
    return result.stdout


_cache: dict[tuple, list[dict]] = {}


def render(
    values: dict | None = None,
    values_files: tuple[Path, ...] = (),
    api_versions: tuple[str, ...] = OPERATOR_APIS,
) -> list[dict]:
    """The chart's manifests (hooks included) for these values, one dict each."""
    key = (yaml.safe_dump(values), values_files, api_versions)
    if key not in _cache:
        args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION]
        for api in api_versions:
            args += ["--api-versions", api]
        out = run_helm(*args, values=values, values_files=values_files)
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        _cache[key] = [doc for doc in yaml.load_all(out, Loader=loader) if doc]
    return _cache[key]


def by_kind(manifests: list[dict], kind: str) -> list[dict]:
    return [m for m in manifests if m["kind"] == kind]


def named(manifests: list[dict], kind: str, name: str) -> dict:
    found = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} rendered"
    return found[0]


def pod_specs(manifest: dict) -> list[dict]:
    """Every pod template in a manifest (Deployments, Jobs, RayCluster head and groups)."""
    spec = manifest.get("spec", {})
    if manifest["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return [spec["template"]["spec"]]
    if manifest["kind"] == "RayCluster":
        return [spec["headGroupSpec"]["template"]["spec"]] + [
            group["template"]["spec"] for group in spec.get("workerGroupSpecs", [])
        ]
    return []

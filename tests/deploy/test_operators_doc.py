"""docs/operators.md says what the chart and the images really do: the KEDA stream and
consumer names are the code's, every hadolint exception is listed, every Secret key the
chart reads is in the Secrets table, and every values key of the interface is described."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from helpers.chart import CHART, render

from inflab.core.nats_permissions import WORKER_FOLLOW_UPS, WORKER_STAGES, follow_up_durable
from inflab.core.subjects import Subjects

pytestmark = pytest.mark.chart

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "operators.md").read_text()


def test_the_keda_names_in_the_doc_are_the_codes():
    code = Subjects()
    for service, stage in WORKER_STAGES.items():
        row = f"| {service} | `{code.jobs_stream}` | `{code.durable(service)}` | `{code.request(stage)}` |"
        assert row in DOC
        for follow_up in WORKER_FOLLOW_UPS.get(service, ()):
            durable = code.durable(follow_up_durable(service, follow_up))
            assert f"| {service} | `{code.jobs_stream}` | `{durable}` | `{code.request(follow_up)}` |" in DOC


def test_every_hadolint_exception_is_listed():
    ignores = []
    for dockerfile in (ROOT / "services").glob("*/Dockerfile"):
        for rules in re.findall(r"^# hadolint ignore=(\S+)$", dockerfile.read_text(), re.M):
            ignores += [(dockerfile.relative_to(ROOT).as_posix(), rule) for rule in rules.split(",")]
    assert ignores == [("services/workers/Dockerfile", "DL3006")] * 2
    assert "two inline `DL3006` ignores in `services/workers/Dockerfile`" in DOC
    assert not list(ROOT.glob(".hadolint.y*ml")), "no repository-wide ignore list"


def test_every_secret_key_the_chart_reads_is_in_the_secrets_table():
    keys = set()
    for files in ((), (CHART / "ci" / "gpu-values.yaml",)):
        text = yaml.safe_dump_all(render(values_files=files))
        keys |= set(re.findall(r"secretKeyRef:\s*\n\s*key: (\S+)", text))
        keys |= set(re.findall(r"key: (\S+)\n\s*name: \S+\n?\s*(?:optional: \S+\n\s*)?", text))
    keys = {k for k in keys if not k.startswith(("nvidia.com", "kubernetes.io"))}
    assert {"url", "access-key-id", "secret-access-key", "gateway-password", "trainer-password",
            "signing-key", "verify-key", "secret-key", "metrics-token"} <= keys
    table = DOC.split("### Secrets to create first")[1].split("## Images")[0]
    for key in keys:
        assert f"`{key}`" in table, key


def test_the_values_interface_is_described_and_exists():
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def has(path: str) -> bool:
        node = values
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    interface = ["ray.mode", "ray.address", "gpu.enabled", "gpu.count", "gpu.nodeSelector", "gpu.tolerations",
                 "database.existingSecret", "objectStore.url", "objectStore.endpoint", "objectStore.existingSecret",
                 "nats.url", "nats.monitoringUrl", "nats.existingSecret", "ingress.enabled", "ingress.host",
                 "ingress.tlsSecret", "keda.enabled", "networkPolicy.enabled", "podDisruptionBudget.enabled",
                 "serviceMonitor.enabled"]
    for key in interface:
        assert has(key), key
        assert f"`{key}`" in DOC, key
    for prerequisite in ("KubeRay operator | `ray.mode: kuberay` | 1.7 or newer", "KEDA | `keda.enabled` | 2.20 or newer",
                         "NVIDIA device plugin"):
        assert prerequisite in DOC


def test_the_readme_points_to_the_doc():
    assert "docs/operators.md" in (ROOT / "README.md").read_text()

"""The Helm chart (deploy/helm/influence-lab), rendered by the real helm for a Kubernetes
1.37 cluster with KubeRay, KEDA and the Prometheus operator, offline:

* ``helm lint --strict`` passes;
* every manifest of every values set is valid: built-in kinds against kubernetes-validate's
  strict 1.37 schemas (a kind without a schema fails), custom resources against the
  upstream CRDs' schemas made strict (tests/helpers/crd_schema.py);
* the references between objects hold (Deployments behind ScaledObjects, pods behind PDBs
  and Services, Secrets named by values keys);
* values the schema must refuse are refused, with helm's message naming them.

The behaviour of each part (GPUs, Ray, KEDA, hardening, NetworkPolicies) is in
test_chart_behaviour.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from helpers import crd_schema, k8s_schema
from helpers.chart import CHART, OPERATOR_APIS, RenderError, by_kind, pod_specs, render, run_helm

pytestmark = pytest.mark.chart

VALUES_FILES = sorted((CHART / "ci").glob("*-values.yaml"))
#: Every values set the tests render: the defaults and the chart's ci/ files.
VALUE_SETS = {"default": ()} | {path.name.removesuffix("-values.yaml"): (path,) for path in VALUES_FILES}
CUSTOM_GROUPS = ("ray.io/", "keda.sh/", "monitoring.coreos.com/")


def rendered(name: str) -> list[dict]:
    return render(values_files=VALUE_SETS[name])


def chart_values(name: str) -> dict:
    """The values helm used for a values set: the chart's defaults merged with the file."""

    def merge(base: dict, over: dict) -> dict:
        out = dict(base)
        for key, value in over.items():
            out[key] = merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
        return out

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for path in VALUE_SETS[name]:
        values = merge(values, yaml.safe_load(path.read_text()))
    return values


def test_the_values_sets_cover_every_ray_mode_gpus_and_a_minimal_install():
    modes = {chart_values(name)["ray"]["mode"] for name in VALUE_SETS}
    assert modes == {"local", "external", "kuberay"}
    assert {"default", "gpu", "local-gpu", "minimal"} <= set(VALUE_SETS)


@pytest.mark.parametrize("name", VALUE_SETS)
def test_helm_lint_strict_passes(name: str):
    out = run_helm("lint", "--strict", str(CHART), *[arg for p in VALUE_SETS[name] for arg in ("-f", str(p))])
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_built_in_manifest_is_valid_for_kubernetes_1_37(name: str):
    for manifest in rendered(name):
        if manifest["apiVersion"].startswith(CUSTOM_GROUPS):
            continue
        # A kind kubernetes-validate has no schema for raises SchemaNotFoundError: a failure.
        try:
            k8s_schema.validate(manifest)
        except jsonschema.ValidationError as exc:
            pytest.fail(f"{manifest['kind']} {manifest['metadata']['name']}: {exc.message} at {list(exc.absolute_path)}")


def test_the_cached_validator_agrees_with_kubernetes_validate():
    """kubernetes_validate.validate itself (slow: once per kind) on the default render, and
    both refuse an unknown field and a kind without a schema."""
    manifests = rendered("default")
    for kind in {m["kind"] for m in manifests}:
        manifest = next(m for m in manifests if m["kind"] == kind)
        kubernetes_validate.validate(manifest, k8s_schema.KUBE_VERSION, strict=True)
    deployment = json.loads(json.dumps(by_kind(manifests, "Deployment")[0]))
    deployment["spec"]["template"]["spec"]["containers"][0]["probes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, k8s_schema.KUBE_VERSION, strict=True)
    with pytest.raises(jsonschema.ValidationError):
        k8s_schema.validate(deployment)
    unknown = {"apiVersion": "example.org/v1", "kind": "Widget", "metadata": {"name": "w"}}
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        k8s_schema.validate(unknown)


needs_crds = pytest.mark.skipif(
    crd_schema.crds_dir() is None,
    reason="the upstream CRDs (KubeRay, KEDA, prometheus-operator) are not beside the repository "
    "(../shared/k8s-crds, or INFLAB_K8S_CRDS); CI lays them out",
)


@needs_crds
@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_custom_resource_is_valid_against_its_crd(name: str):
    for manifest in rendered(name):
        if not manifest["apiVersion"].startswith(CUSTOM_GROUPS):
            continue
        assert (manifest["apiVersion"], manifest["kind"]) in crd_schema.schemas(), manifest["kind"]
        try:
            crd_schema.validate(manifest)
        except jsonschema.ValidationError as exc:
            pytest.fail(f"{manifest['kind']} {manifest['metadata']['name']}: {exc.message} at {list(exc.absolute_path)}")
        if manifest["kind"] == "ScaledObject":  # the CRD's CEL rule, by hand
            spec = manifest["spec"]
            assert spec.get("minReplicaCount", 0) <= spec.get("maxReplicaCount", 100)


@needs_crds
def test_the_crd_schemas_are_strict():
    gpu = rendered("gpu")
    cluster = json.loads(json.dumps(by_kind(gpu, "RayCluster")[0]))
    cluster["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3  # a typo of maxReplicas
    with pytest.raises(jsonschema.ValidationError, match="maxReplica"):
        crd_schema.validate(cluster)
    scaled = json.loads(json.dumps(by_kind(gpu, "ScaledObject")[0]))
    scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 5  # metadata values are strings
    with pytest.raises(jsonschema.ValidationError):
        crd_schema.validate(scaled)


def test_the_gpu_values_render_every_kind_the_operators_rely_on():
    kinds = {m["kind"] for m in rendered("gpu")}
    assert {"Deployment", "Job", "RayCluster", "ScaledObject", "NetworkPolicy", "PodDisruptionBudget",
            "ServiceMonitor", "Ingress", "Service"} <= kinds


# Cross-references -------------------------------------------------------------------------


def _selects(selector: dict, labels: dict) -> bool:
    match = selector.get("matchLabels", {})
    assert not selector.get("matchExpressions"), "the chart selects by labels only"
    return all(labels.get(k) == v for k, v in match.items())


def _pod_labels(manifests: list[dict]) -> list[dict]:
    out = []
    for m in manifests:
        if m["kind"] in ("Deployment", "Job"):
            out.append(m["spec"]["template"]["metadata"]["labels"])
        elif m["kind"] == "RayCluster":
            out.append(m["spec"]["headGroupSpec"]["template"]["metadata"]["labels"])
            out += [g["template"]["metadata"]["labels"] for g in m["spec"]["workerGroupSpecs"]]
    return out


def _secret_names_in_values(values: object) -> set[str]:
    found: set[str] = set()
    if isinstance(values, dict):
        for key, value in values.items():
            if key in ("existingSecret", "tlsSecret") and isinstance(value, str) and value:
                found.add(value)
            else:
                found |= _secret_names_in_values(value)
    return found


def _secret_refs(node: object) -> list[str]:
    """Every Secret name a manifest refers to (secretKeyRef, secret volumes, credentials)."""
    refs: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("secretKeyRef", "credentials") and isinstance(value, dict):
                refs.append(value["name"])
            elif key == "secret" and isinstance(value, dict) and "secretName" in value:
                refs.append(value["secretName"])
            elif key == "tls" and isinstance(value, list):
                refs += [t["secretName"] for t in value if "secretName" in t]
            else:
                refs += _secret_refs(value)
    elif isinstance(node, list):
        for item in node:
            refs += _secret_refs(item)
    return refs


@pytest.mark.parametrize("name", VALUE_SETS)
def test_the_references_between_objects_hold(name: str):
    manifests = rendered(name)
    deployments = {m["metadata"]["name"] for m in by_kind(manifests, "Deployment")}
    pods = _pod_labels(manifests)
    for scaled in by_kind(manifests, "ScaledObject"):
        target = scaled["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["name"] in deployments
    for pdb in by_kind(manifests, "PodDisruptionBudget"):
        assert any(_selects(pdb["spec"]["selector"], labels) for labels in pods), pdb["metadata"]["name"]
    services = {}
    for service in by_kind(manifests, "Service"):
        services[service["metadata"]["name"]] = service
        assert any(_selects({"matchLabels": service["spec"]["selector"]}, labels) for labels in pods)
    for ingress in by_kind(manifests, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                ports = {p["name"] for p in services[backend["name"]]["spec"]["ports"]}
                assert backend["port"]["name"] in ports
    for monitor in by_kind(manifests, "ServiceMonitor"):
        selected = [s for s in services.values() if _selects(monitor["spec"]["selector"], s["metadata"]["labels"])]
        ports = {p["name"] for s in selected for p in s["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
        assert {"http", "metrics"} <= ports
    for policy in by_kind(manifests, "NetworkPolicy"):
        if "nats-ingress" not in policy["metadata"]["name"]:
            assert any(_selects(policy["spec"]["podSelector"], labels) for labels in pods)
    # Each Secret a manifest names is one a values key names: the operator creates it.
    allowed = _secret_names_in_values(chart_values(name))
    for manifest in manifests:
        for secret in _secret_refs(manifest):
            assert secret in allowed, f"{manifest['kind']} {manifest['metadata']['name']} names Secret {secret!r}"
    # The chart creates no Secret: credentials are the operator's.
    assert not by_kind(manifests, "Secret")


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_pod_uses_the_release_service_account_or_none(name: str):
    for manifest in rendered(name):
        for spec in pod_specs(manifest):
            assert spec.get("serviceAccountName") in (None, f"lab-{CHART.name}")


# Values the schema or the templates refuse -------------------------------------------------


@pytest.mark.parametrize(
    "values, message",
    [
        ({"replicaCount": 3}, "replicaCount"),
        ({"gpu": {"enabled": True, "count": 1, "type": "a100"}}, "type"),
        ({"keda": {"trainer": {"minReplicaCount": 0, "maxReplicaCount": 2, "lagThreshold": 1,
                               "activationLagThreshold": 0, "cpu": 1}}}, "cpu"),
        ({"gpu": {"count": 0}}, "count"),
        ({"ray": {"mode": "foo"}}, "mode"),
        ({"nats": {"url": "http://nats:4222"}}, "url"),
        ({"database": {"existingSecret": ""}}, "existingSecret"),
    ],
    ids=["unknown-top-level-key", "unknown-key-in-gpu", "unknown-key-in-keda-trainer", "gpu-count-0",
         "ray-mode-foo", "nats-url-scheme", "database-secret-empty"],
)
def test_the_schema_refuses_bad_values(values: dict, message: str):
    with pytest.raises(RenderError, match="values don't meet the specifications of the schema") as err:
        render(values)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"ingress": {"enabled": True}}, "ingress.host is required when ingress.enabled is true"),
        ({"ray": {"mode": "external"}}, "ray.address is required when ray.mode is external"),
        ({"keda": {"enabled": True, "trainer": {"minReplicaCount": 3, "maxReplicaCount": 2, "lagThreshold": 1,
                                                 "activationLagThreshold": 0}}},
         "keda.trainer.minReplicaCount (3) must not exceed keda.trainer.maxReplicaCount (2)"),
        ({"ray": {"mode": "kuberay", "workers": {"minReplicas": 5, "maxReplicas": 2}}},
         "ray.workers.minReplicas (5) must not exceed ray.workers.maxReplicas (2)"),
    ],
    ids=["ingress-without-host", "external-ray-without-address", "keda-min-above-max", "ray-min-above-max"],
)
def test_a_missing_or_contradictory_value_fails_with_its_message(values: dict, message: str):
    with pytest.raises(RenderError) as err:
        render(values)
    assert message in str(err.value)


def test_every_block_of_the_schema_refuses_unknown_keys():
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(node: dict, path: str) -> None:
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, f"{path or 'top level'} accepts unknown keys"
            for key, sub in node["properties"].items():
                walk(sub, f"{path}.{key}".lstrip("."))

    walk(schema, "")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) <= set(schema["properties"])


def test_the_chart_renders_offline_with_no_dependency():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and not chart.get("dependencies")
    assert not (CHART.parent / "inflab").exists(), "the placeholder chart is gone"
    assert Path(CHART / "templates" / "_helpers.tpl").exists()


def test_without_the_operators_apis_the_chart_still_installs_without_their_resources():
    manifests = render(values_files=VALUE_SETS["gpu"], api_versions=())
    kinds = {m["kind"] for m in manifests}
    assert not kinds & {"RayCluster", "ScaledObject", "ServiceMonitor"}
    assert {"Deployment", "Job", "NetworkPolicy"} <= kinds
    # Without KEDA to own the count, the workers keep theirs.
    for deployment in by_kind(manifests, "Deployment"):
        assert deployment["spec"]["replicas"] >= 1
    assert OPERATOR_APIS  # the other renders do pass them

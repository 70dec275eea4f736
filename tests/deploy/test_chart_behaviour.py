"""What the rendered chart does, object by object: the default CPU-only install, the
gateway and its migrations, GPUs with each Ray mode, KEDA on the workers' real consumer
names, credentials only through Secrets, and the hardening every pod and container gets.
The manifests come from the real helm (tests/helpers/chart.py)."""

from __future__ import annotations

import re

import pytest
import yaml
from helpers.chart import CHART, by_kind, named, pod_specs, render

from inflab.core.nats_permissions import WORKER_FOLLOW_UPS, follow_up_durable
from inflab.core.subjects import Subjects

pytestmark = pytest.mark.chart

GPU = (CHART / "ci" / "gpu-values.yaml",)
LOCAL_GPU = (CHART / "ci" / "local-gpu-values.yaml",)
EXTERNAL = (CHART / "ci" / "external-values.yaml",)
MINIMAL = (CHART / "ci" / "minimal-values.yaml",)
ALL_SETS = {"default": (), "gpu": GPU, "local-gpu": LOCAL_GPU, "external": EXTERNAL, "minimal": MINIMAL}
WORKERS = ("trainer", "inference", "influence")
FULL = "lab-influence-lab"


def containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec["containers"]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def gpu_limit(container: dict) -> object:
    return container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")


# Point 3: the default install --------------------------------------------------------------


def test_the_default_install_is_cpu_only_with_policies_and_budgets_and_no_operator_resources():
    manifests = render()
    assert "nvidia.com/gpu" not in yaml.safe_dump_all(manifests)
    assert "NUM_GPUS" not in yaml.safe_dump_all(manifests)
    assert by_kind(manifests, "NetworkPolicy") and by_kind(manifests, "PodDisruptionBudget")
    assert not by_kind(manifests, "ScaledObject")
    assert not by_kind(manifests, "ServiceMonitor")
    assert not by_kind(manifests, "RayCluster")
    assert not by_kind(manifests, "Ingress")
    deployments = {d["metadata"]["name"] for d in by_kind(manifests, "Deployment")}
    assert deployments == {f"{FULL}-gateway", *(f"{FULL}-{w}" for w in WORKERS)}


CREDENTIAL = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$|KEY_ID|DATABASE_URL|CREDENTIAL", re.I)


@pytest.mark.parametrize("name", ALL_SETS)
def test_no_credential_is_a_plain_value(name: str):
    for manifest in render(values_files=ALL_SETS[name]):
        for spec in pod_specs(manifest):
            for container in containers(spec):
                for var in container.get("env", []):
                    if CREDENTIAL.search(var["name"]):
                        assert "secretKeyRef" in var.get("valueFrom", {}), f"{var['name']} in {manifest['metadata']['name']}"
                    # No URL with a user:password in it, whatever the variable.
                    assert not re.search(r"://[^/@\s]+:[^/@\s]+@", str(var.get("value", "")))
    # Nor is there a values key that could hold one: only names of Secrets.
    def keys(node: object, path: str = "") -> list[str]:
        if isinstance(node, dict):
            return [k for key, value in node.items() for k in [f"{path}{key}", *keys(value, f"{path}{key}.")]]
        return []

    for key in keys(yaml.safe_load((CHART / "values.yaml").read_text())):
        leaf = key.rsplit(".", 1)[-1]
        if re.search(r"password|secret|token|credential|key$", leaf, re.I):
            assert leaf in ("existingSecret", "tlsSecret", "pullSecrets"), key
    assert not re.search(r"://[^/@\s]+:[^/@\s]+@", yaml.safe_dump(yaml.safe_load((CHART / "values.yaml").read_text())))


def test_each_service_gets_only_its_own_nats_credential_and_job_key():
    manifests = render()
    for role in ("gateway", *WORKERS):
        container = named(manifests, "Deployment", f"{FULL}-{role}")["spec"]["template"]["spec"]["containers"][0]
        env = env_of(container)
        assert env["INFLAB_NATS_USER"]["value"] == role
        assert env["INFLAB_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "inflab-nats", "key": f"{role}-password"}
        if role == "gateway":
            assert env["INFLAB_JOB_SIGNING_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "signing-key"
            assert "INFLAB_JOB_VERIFY_KEY" not in env
            assert env["INFLAB_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "inflab-database", "key": "url"}
        else:
            assert env["INFLAB_JOB_VERIFY_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "verify-key"
            assert "INFLAB_JOB_SIGNING_KEY" not in env and "INFLAB_DATABASE_URL" not in env
        assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "inflab-object-store", "key": "access-key-id"}
        assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "secret-access-key"


# Point 4: the gateway and its migrations ----------------------------------------------------


def test_the_gateway_has_two_replicas_probes_resources_a_service_and_a_budget():
    manifests = render()
    gateway = named(manifests, "Deployment", f"{FULL}-gateway")
    assert gateway["spec"]["replicas"] == 2
    container = gateway["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "inflab-gateway:0.1.0"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    assert container["resources"]["limits"]["memory"]
    service = named(manifests, "Service", f"{FULL}-gateway")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    pdb = named(manifests, "PodDisruptionBudget", f"{FULL}-gateway")
    assert pdb["spec"]["minAvailable"] == 1
    # The replicas spread over nodes where they can.
    (term,) = gateway["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == gateway["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("name", ALL_SETS)
def test_every_container_has_requests_and_a_memory_limit(name: str):
    for manifest in render(values_files=ALL_SETS[name]):
        for spec in pod_specs(manifest):
            for container in containers(spec):
                resources = container.get("resources", {})
                assert resources.get("requests", {}).get("memory"), container["name"]
                assert resources.get("requests", {}).get("cpu"), container["name"]
                assert resources.get("limits", {}).get("memory"), container["name"]


def test_the_ingress_has_tls_for_its_host_when_enabled():
    ingress = by_kind(render(values_files=GPU), "Ingress")[0]
    assert ingress["spec"]["rules"][0]["host"] == "inflab.example.org"
    assert ingress["spec"]["tls"] == [{"hosts": ["inflab.example.org"], "secretName": "inflab-tls"}]
    assert ingress["spec"]["ingressClassName"] == "nginx"
    # TLS by default (the session cookie is Secure); "" turns it off.
    default = by_kind(render({"ingress": {"enabled": True, "host": "lab.example.org"}}), "Ingress")[0]
    assert default["spec"]["tls"] == [{"hosts": ["lab.example.org"], "secretName": "inflab-tls"}]
    plain = by_kind(render({"ingress": {"enabled": True, "host": "lab.example.org", "tlsSecret": ""}}), "Ingress")[0]
    assert "tls" not in plain["spec"]


def test_the_migrations_run_in_a_hook_job_before_install_and_upgrade_and_nothing_else_migrates():
    manifests = render()
    job = named(manifests, "Job", f"{FULL}-migrate")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    assert job["spec"]["backoffLimit"] == 3
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["inflab-migrate"]
    assert container["image"] == "inflab-gateway:0.1.0"  # no torch needed to migrate
    assert env_of(container)["INFLAB_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "inflab-database", "key": "url"}
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    # No Deployment runs a migration.
    for deployment in by_kind(manifests, "Deployment"):
        for c in containers(deployment["spec"]["template"]["spec"]):
            assert "migrate" not in " ".join(c.get("command", []) + c.get("args", []))


def test_no_service_migrates_the_database_itself():
    """Only `inflab-migrate` (the hook Job), `inflab migrate` and the embedded stack upgrade the schema."""
    root = CHART.parents[2]
    sources = [*root.glob("services/*/src/**/*.py"), root / "libs/core/src/inflab/core/worker.py"]
    assert len(sources) > 20
    for path in sources:
        text = path.read_text()
        for call in ("inflab.core.db.migrate", "from alembic import command", "command.upgrade"):
            assert call not in text, f"{path} migrates ({call})"


def test_the_migrate_command_exists_in_the_cli():
    from typer.testing import CliRunner

    from inflab.devtools import cli

    result = CliRunner().invoke(cli.app, ["migrate", "--help"])
    assert result.exit_code == 0 and "INFLAB_DATABASE_URL" in result.output


# Point 5: workers, Ray and GPUs ---------------------------------------------------------------


def test_the_workers_consume_their_own_subjects_with_the_workers_image():
    manifests = render()
    for worker in WORKERS:
        deployment = named(manifests, "Deployment", f"{FULL}-{worker}")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == ["python", "-m", f"inflab.{worker}"]
        assert container["image"] == "inflab-workers:0.1.0"
        env = env_of(container)
        assert env["INFLAB_STREAM_PREFIX"]["value"] == "INFLAB" and env["INFLAB_SUBJECT_PREFIX"]["value"] == "inflab"
        assert env["INFLAB_RAY_ADDRESS"]["value"] == ""  # ray.mode local: a Ray in the pod
        assert {"name": "metrics", "containerPort": 9464, "protocol": "TCP"} in container["ports"]
        assert env["INFLAB_METRICS_PORT"]["value"] == "9464" and env["INFLAB_METRICS_HOST"]["value"] == "0.0.0.0"
        assert "INFLAB_METRICS_TOKEN" not in env


def test_kuberay_renders_one_raycluster_with_a_cpu_head_and_an_autoscaled_gpu_group():
    manifests = render(values_files=GPU)
    (cluster,) = by_kind(manifests, "RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    head_container = head["template"]["spec"]["containers"][0]
    assert gpu_limit(head_container) is None
    assert "nodeSelector" not in head["template"]["spec"]
    (group,) = spec["workerGroupSpecs"]
    assert group["minReplicas"] == 0 and group["maxReplicas"] == 8
    pod = group["template"]["spec"]
    assert gpu_limit(pod["containers"][0]) == 2  # gpu.count
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    # Head, GPU workers and the worker Deployments run the one workers image.
    image = "registry.example.org/inflab-workers:0.1.0-cuda"
    assert head_container["image"] == image and pod["containers"][0]["image"] == image
    for worker in WORKERS:
        deployment = named(manifests, "Deployment", f"{FULL}-{worker}")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == image
        # The Deployments join the cluster as Ray nodes without resources (Ray Client cannot
        # carry streaming tasks) at the head's GCS address, and need no GPU of their own.
        assert gpu_limit(container) is None and "nodeSelector" not in deployment["spec"]["template"]["spec"]
        head_service = f"{cluster['metadata']['name']}-head-svc"
        env = env_of(container)
        assert env["RAY_GCS_ADDRESS"]["value"] == f"{head_service}:6379"
        assert env["INFLAB_RAY_ADDRESS"]["value"] == "auto"
        assert_joins_ray(container, worker)
        assert_stage_asks_for_a_gpu(container, worker)
    ports = {p["name"]: p["containerPort"] for p in head_container["ports"]}
    assert ports["gcs"] == 6379


def assert_stage_asks_for_a_gpu(container: dict, worker: str) -> None:
    """Training and influence ask Ray for one GPU (what makes the autoscaler add a GPU
    pod); inference runs on CPUs."""
    from inflab.core.settings import Settings

    env = env_of(container)
    asked = {name: var["value"] for name, var in env.items() if name.endswith("_NUM_GPUS")}
    if worker == "inference":
        assert asked == {}
    else:
        stage = "TRAIN" if worker == "trainer" else "INFLUENCE"
        assert asked == {f"INFLAB_{stage}_NUM_GPUS": "1"}
        # The variable is the setting the service reads.
        assert getattr(Settings(**{f"{stage.lower()}_num_gpus": 1}), f"{stage.lower()}_num_gpus") == 1
        assert f"{stage.lower()}_num_gpus" in Settings.model_fields


def assert_joins_ray(container: dict, worker: str) -> None:
    command = container["command"]
    assert command[:2] == ["/bin/sh", "-c"]
    assert command[2] == (
        f'ray start --address="$RAY_GCS_ADDRESS" --num-cpus=0 --num-gpus=0 && exec python -m inflab.{worker}'
    )


def test_local_ray_with_gpus_puts_them_on_the_trainer_and_influence_deployments():
    manifests = render(values_files=LOCAL_GPU)
    assert not by_kind(manifests, "RayCluster")
    for worker in WORKERS:
        pod = named(manifests, "Deployment", f"{FULL}-{worker}")["spec"]["template"]["spec"]
        if worker == "inference":
            assert gpu_limit(pod["containers"][0]) is None and "nodeSelector" not in pod
            continue
        assert gpu_limit(pod["containers"][0]) == 1
        assert_stage_asks_for_a_gpu(pod["containers"][0], worker)
        assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
        assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
        assert pod["containers"][0]["resources"]["limits"]["memory"]  # kept beside the GPU


def test_external_ray_hands_the_workers_its_address():
    manifests = render(values_files=EXTERNAL)
    assert not by_kind(manifests, "RayCluster")
    for worker in WORKERS:
        container = named(manifests, "Deployment", f"{FULL}-{worker}")["spec"]["template"]["spec"]["containers"][0]
        assert env_of(container)["RAY_GCS_ADDRESS"]["value"] == "ray-head.ray.svc:6379"
        assert env_of(container)["INFLAB_RAY_ADDRESS"]["value"] == "auto"
        assert_joins_ray(container, worker)
    # Ray traffic both ways with the external cluster's nodes, and with nothing else.
    policies = _policies(manifests)
    external = [{"ipBlock": {"cidr": "10.20.0.0/16"}}]
    assert {"from": external} in policies["ray-ingress"]["spec"]["ingress"]
    assert {"to": external} in policies["egress"]["spec"]["egress"]


def test_kuberay_without_gpus_has_a_cpu_worker_group():
    (cluster,) = by_kind(render({"ray": {"mode": "kuberay"}}), "RayCluster")
    (group,) = cluster["spec"]["workerGroupSpecs"]
    assert group["groupName"] == "cpu" and gpu_limit(group["template"]["spec"]["containers"][0]) is None


# Point 6: KEDA on the workers' consumers ------------------------------------------------------


@pytest.mark.parametrize("prefix", ["INFLAB", "LABSTAGING"])
def test_one_scaledobject_per_worker_on_the_consumer_the_code_creates(prefix: str):
    manifests = render(values_files=GPU) if prefix == "INFLAB" else render(
        {"keda": {"enabled": True}, "nats": {"streamPrefix": prefix}}
    )
    code = Subjects(stream_prefix=prefix)
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in by_kind(manifests, "ScaledObject")}
    assert set(scaled) == {f"{FULL}-{w}" for w in WORKERS}
    for worker in WORKERS:
        spec = scaled[f"{FULL}-{worker}"]["spec"]
        # One trigger per durable consumer the worker reads: its stage's and its follow-ups'.
        consumers = [code.durable(worker)] + [
            code.durable(follow_up_durable(worker, stage)) for stage in WORKER_FOLLOW_UPS.get(worker, ())
        ]
        assert [t["metadata"]["consumer"] for t in spec["triggers"]] == consumers
        meta = spec["triggers"][0]["metadata"]
        for trigger in spec["triggers"]:
            assert trigger["type"] == "nats-jetstream"
            assert trigger["metadata"]["stream"] == code.jobs_stream
            assert {k: v for k, v in trigger["metadata"].items() if k != "consumer"} == {
                k: v for k, v in meta.items() if k != "consumer"}
        assert meta["account"] == "$G"
        assert int(meta["lagThreshold"]) >= 1 and int(meta["activationLagThreshold"]) >= 0
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        # KEDA owns the replica count: the Deployment leaves it unset.
        assert "replicas" not in named(manifests, "Deployment", f"{FULL}-{worker}")["spec"]
        if prefix == "INFLAB":
            assert meta["natsServerMonitoringEndpoint"] == "nats.messaging.svc:8222"
            assert meta["useHttps"] == "true"
        else:
            assert meta["natsServerMonitoringEndpoint"] == "nats:8222"
            assert meta["useHttps"] == "false"


def test_the_workers_durable_consumers_are_named_by_the_subjects_module():
    """The names the chart renders are the ones the workers' consumers get: worker.serve
    names its consumer Subjects.durable(service), or Subjects.durable(follow_up_durable(
    service, stage)) for a follow-up stage that worker.main starts beside it."""
    import inspect

    from inflab.core import worker

    assert "durable = bus.subjects.durable(durable or service)" in inspect.getsource(worker.serve)
    assert "durable=follow_up_durable(service, extra)" in inspect.getsource(worker.main)
    assert Subjects().jobs_stream == "INFLAB_JOBS" and Subjects().durable("trainer") == "INFLAB_trainer"
    assert Subjects().durable(follow_up_durable("trainer", "validation")) == "INFLAB_trainer_validation"


# Point 7: hardening, NetworkPolicies, ServiceMonitor -----------------------------------------


@pytest.mark.parametrize("name", ALL_SETS)
def test_every_pod_and_container_is_hardened(name: str):
    for manifest in render(values_files=ALL_SETS[name]):
        for spec in pod_specs(manifest):
            pod = spec["securityContext"]
            assert pod["runAsNonRoot"] is True and isinstance(pod["runAsUser"], int) and pod["runAsUser"] > 0
            assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
            mounts = set()
            for container in containers(spec):
                sc = container["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False
                assert sc["capabilities"]["drop"] == ["ALL"]
                assert sc["readOnlyRootFilesystem"] is True
                assert sc.get("privileged", False) is False
                mounts |= {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{manifest['metadata']['name']}: /tmp must be a writable emptyDir"
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            assert "emptyDir" in volumes["tmp"]
        if manifest["kind"] == "RayCluster":
            autoscaler = manifest["spec"]["autoscalerOptions"]["securityContext"]
            assert autoscaler["readOnlyRootFilesystem"] is True and autoscaler["capabilities"]["drop"] == ["ALL"]


def _policies(manifests: list[dict]) -> dict[str, dict]:
    return {p["metadata"]["name"].removeprefix(f"{FULL}-"): p for p in by_kind(manifests, "NetworkPolicy")}


def test_ingress_is_denied_to_the_release_except_the_gateway_from_the_ingress_controller():
    manifests = render()
    policies = _policies(manifests)
    deny = policies["default-deny-ingress"]["spec"]
    assert deny["policyTypes"] == ["Ingress"] and "ingress" not in deny
    release = {"app.kubernetes.io/name": "influence-lab", "app.kubernetes.io/instance": "lab"}
    assert deny["podSelector"]["matchLabels"] == release
    # Every pod of the release carries those labels, so the deny covers them all.
    for manifest in manifests:
        if manifest["kind"] in ("Deployment", "Job"):
            assert release.items() <= manifest["spec"]["template"]["metadata"]["labels"].items()
    gateway = policies["gateway-ingress"]["spec"]
    assert gateway["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
    (rule,) = gateway["ingress"]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}},
                             "podSelector": {}}]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    # Only Ray peers of the release reach the workers.
    ray = policies["ray-ingress"]["spec"]
    assert ray["podSelector"]["matchLabels"] == {"app.kubernetes.io/instance": "lab", "influence-lab/ray-peer": "true"}
    assert ray["ingress"] == [{"from": [{"podSelector": {"matchLabels": ray["podSelector"]["matchLabels"]}}]}]
    gateway_labels = named(manifests, "Deployment", f"{FULL}-gateway")["spec"]["template"]["metadata"]["labels"]
    assert "influence-lab/ray-peer" not in gateway_labels
    for worker in WORKERS:
        labels = named(manifests, "Deployment", f"{FULL}-{worker}")["spec"]["template"]["metadata"]["labels"]
        assert labels["influence-lab/ray-peer"] == "true"


def test_egress_is_limited_to_dns_nats_postgres_s3_and_ray():
    manifests = render(values_files=GPU)
    egress = _policies(manifests)["egress"]["spec"]
    assert egress["policyTypes"] == ["Egress"]
    ports = set()
    for rule in egress["egress"]:
        if "ports" not in rule:  # the Ray rule: any port, but only to the release's Ray peers
            assert rule["to"] == [{"podSelector": {"matchLabels": {
                "app.kubernetes.io/instance": "lab", "influence-lab/ray-peer": "true"}}}]
            continue
        ports |= {(p["port"], p["protocol"]) for p in rule["ports"]}
    # DNS, NATS (tls://...:4222), Postgres, S3 (https, and the MinIO endpoint's 9000),
    # and the Kubernetes API for KubeRay's autoscaler.
    assert ports == {(53, "UDP"), (53, "TCP"), (4222, "TCP"), (5432, "TCP"), (443, "TCP"), (9000, "TCP"), (6443, "TCP")}
    # The in-cluster NATS: the release's pods reach its client port, KEDA its monitoring port.
    nats = _policies(manifests)["nats-ingress"]["spec"]
    assert nats["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "nats"}
    keda_rule = [r for r in nats["ingress"] if r["ports"] == [{"port": 8222, "protocol": "TCP"}]]
    assert keda_rule[0]["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}}]


def test_prometheus_reaches_the_metrics_ports_when_the_servicemonitor_is_on():
    manifests = render(values_files=GPU)
    (monitor,) = by_kind(manifests, "ServiceMonitor")
    endpoints = {e["port"]: e for e in monitor["spec"]["endpoints"]}
    assert endpoints["http"]["path"] == "/metrics" and endpoints["metrics"]["path"] == "/metrics"
    assert endpoints["http"]["authorization"]["credentials"] == {"name": "inflab-gateway", "key": "metrics-token"}
    assert "authorization" not in endpoints["metrics"]  # the workers' port needs none
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    policies = _policies(manifests)
    prometheus = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}, "podSelector": {}}
    assert prometheus in policies["gateway-ingress"]["spec"]["ingress"][0]["from"]
    assert any(r.get("from") == [prometheus] and r["ports"] == [{"port": "metrics", "protocol": "TCP"}]
               for r in policies["ray-ingress"]["spec"]["ingress"])


def test_switches_turn_policies_and_budgets_off():
    manifests = render(values_files=MINIMAL)
    assert not by_kind(manifests, "NetworkPolicy") and not by_kind(manifests, "PodDisruptionBudget")
    gateway = named(manifests, "Deployment", f"{FULL}-gateway")["spec"]["template"]["spec"]["containers"][0]
    env = env_of(gateway)
    assert "INFLAB_NATS_PASSWORD" not in env and "AWS_ACCESS_KEY_ID" not in env and "INFLAB_SECRET_KEY" not in env


def test_pull_secrets_reach_every_pod_and_node_selector_values_are_strings():
    values = {"image": {"pullSecrets": ["regcred"]}, "ray": {"mode": "kuberay"},
              "gpu": {"enabled": True, "nodeSelector": {"gpu": True, "pool": "a100"}}}
    manifests = render(values)
    for manifest in manifests:
        for spec in pod_specs(manifest):
            assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    (cluster,) = by_kind(manifests, "RayCluster")
    assert cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["nodeSelector"] == {"gpu": "true", "pool": "a100"}


def test_a_monitoring_address_without_a_scheme_is_plain_http():
    manifests = render({"keda": {"enabled": True}, "nats": {"monitoringUrl": "nats.messaging.svc:8222"}})
    for scaled in by_kind(manifests, "ScaledObject"):
        meta = scaled["spec"]["triggers"][0]["metadata"]
        assert meta["natsServerMonitoringEndpoint"] == "nats.messaging.svc:8222" and meta["useHttps"] == "false"


@pytest.mark.parametrize("name", ALL_SETS)
def test_every_inflab_variable_the_chart_sets_is_a_setting(name: str):
    """Settings ignore unknown variables, so a misspelt one would be silently lost."""
    from inflab.core.settings import Settings

    fields = {f"INFLAB_{field.upper()}" for field in Settings.model_fields}
    for manifest in render(values_files=ALL_SETS[name]):
        for spec in pod_specs(manifest):
            for container in containers(spec):
                for var in container.get("env", []):
                    if var["name"].startswith("INFLAB_"):
                        assert var["name"] in fields, f"{var['name']} is no setting"


def test_ray_nodes_have_probes_that_need_no_tool_the_image_lacks():
    """KubeRay's default probes run wget, which the workers' image does not ship; the
    chart's run the image's Python against the same health endpoints. The check passes
    against a server answering `success` and fails against one answering otherwise."""
    import http.server
    import subprocess
    import sys
    import threading

    (cluster,) = by_kind(render(values_files=GPU), "RayCluster")
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    worker = cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    for container, urls in ((head, 2), (worker, 1)):
        for probe in ("readinessProbe", "livenessProbe"):
            command = container[probe]["exec"]["command"]
            assert command[:2] == ["python", "-c"] and "wget" not in command[2]
            assert command[2].count("http://localhost:") == urls
    code = head["readinessProbe"]["exec"]["command"][2]

    answer = {"body": b"success"}

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.end_headers()
            self.wfile.write(answer["body"])

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        local = code.replace("localhost:52365", f"127.0.0.1:{port}").replace("localhost:8265", f"127.0.0.1:{port}")
        assert subprocess.run([sys.executable, "-c", local], capture_output=True).returncode == 0
        answer["body"] = b"unhealthy"
        assert subprocess.run([sys.executable, "-c", local], capture_output=True).returncode != 0
    finally:
        server.shutdown()

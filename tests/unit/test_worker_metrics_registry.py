"""The worker metrics registry: every metric is documented for operators, and GPU memory.
This machine has no GPU: without one the metric is absent (never a made-up 0); with NVML
present (stood in for by a module exposing NVML's functions, the only stand-in in these
tests, as no GPU exists here) every device is read."""

from __future__ import annotations

import sys
import types

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from inflab.core.worker_metrics import WorkerMetrics


def test_no_gpu_no_gpu_metric(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails, as where it is not installed
    text = generate_latest(WorkerMetrics("train").registry).decode()
    assert "inflab_worker_gpu_memory" not in text
    assert "process_resident_memory_bytes" in text


def test_each_device_is_read_through_nvml(monkeypatch):
    memory = {0: (3 * 2**30, 16 * 2**30), 1: (1 * 2**30, 24 * 2**30)}
    nvml = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetCount=lambda: len(memory),
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=memory[h][0], total=memory[h][1]),
    )
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    text = generate_latest(WorkerMetrics("influence").registry).decode()
    samples = {(s.name, s.labels.get("device")): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    for device, (used, total) in memory.items():
        assert samples[("inflab_worker_gpu_memory_used_bytes", str(device))] == used
        assert samples[("inflab_worker_gpu_memory_total_bytes", str(device))] == total


def test_every_worker_metric_is_documented_for_operators():
    from pathlib import Path

    docs = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    workers = docs[docs.index("## Workers"):docs.index("## Settings")]
    registry = WorkerMetrics("train").registry
    names = {family.name for family in registry.collect() if family.name.startswith("inflab_")}
    assert names  # counters are listed without their _total suffix by the registry
    for name in names:
        kind = next(f.type for f in registry.collect() if f.name == name)
        shown = f"{name}_total" if kind == "counter" else name
        assert f"`{shown}`" in workers, f"{shown} is missing from docs/operations.md, Workers"
    assert "`inflab_worker_gpu_memory_used_bytes`" in workers and "process_resident_memory_bytes" in workers


def test_with_a_token_only_its_holder_reads_the_metrics():
    import httpx

    from inflab.devtools.embedded._proc import free_port

    metrics = WorkerMetrics("inference")
    port = metrics.serve("127.0.0.1", free_port(), token="scrape-me")
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        with httpx.Client(trust_env=False, timeout=5.0) as client:
            refused = client.get(url)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
            assert "inflab_worker" not in refused.text
            assert client.get(url, headers={"Authorization": "Bearer not-it"}).status_code == 401
            shown = client.get(url, headers={"Authorization": "Bearer scrape-me"})
            assert shown.status_code == 200 and "inflab_worker_jobs_total" in shown.text
            assert shown.headers["content-type"].startswith("text/plain")
            assert client.get(f"http://127.0.0.1:{port}/other", headers={"Authorization": "Bearer scrape-me"}
                              ).status_code == 404
    finally:
        metrics.close()


def test_without_a_token_the_metrics_are_open():
    import httpx

    from inflab.devtools.embedded._proc import free_port

    metrics = WorkerMetrics("train")
    port = metrics.serve("127.0.0.1", free_port())
    try:
        assert "inflab_worker_jobs_total" in httpx.get(f"http://127.0.0.1:{port}/metrics", trust_env=False).text
    finally:
        metrics.close()


def test_a_process_with_two_stages_serves_both_on_one_registry():
    trainer = WorkerMetrics("train")
    validation = trainer.for_stage("validation")
    validation.jobs.labels("validation", "acked").inc()
    assert validation.registry is trainer.registry
    samples = {(s.name, s.labels.get("stage"), s.labels.get("outcome")): s.value
               for family in text_string_to_metric_families(generate_latest(trainer.registry).decode())
               for s in family.samples}
    assert samples[("inflab_worker_jobs_total", "validation", "acked")] == 1
    assert samples[("inflab_worker_jobs_total", "train", "acked")] == 0
    assert sum(1 for name, *_ in samples if name == "process_resident_memory_bytes") == 1

"""A validation's retrainings as Ray tasks (inflab.trainer.validation_job): on the test
run's local Ray, and on a two-node cluster started with ``ray start`` (a head and a second
node on this machine, each with its own CPU), where the retrainings run on both nodes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from inflab.core.messages import RunSpec

PAIRS = [
    {"id": f"p{i}", "question": f"What is fact number {i}?", "answer": f"Fact {i} is {word}."}
    for i, word in enumerate(["blue", "seven", "Quux", "north", "glass", "tin"])
]
TARGETS = [("What is fact number 2?", "Fact 2 is Quux."), ("What is fact number 5?", "Fact 5 is tin.")]


def tiny_spec(model_id: str) -> RunSpec:
    return RunSpec(
        model_id=model_id, training_data=PAIRS, eval_data=[{"id": "e1", "question": "Hi?"}],
        hyperparams={"learning_rate": 1e-2, "num_epochs": 2, "batch_size": 2, "max_seq_length": 64},
    )


def test_retrainings_run_as_ray_tasks_and_report_where_and_how_long(ray_cluster, tiny_model: Path) -> None:
    from inflab.trainer.validation_job import TaskResources, run_retrainings

    events: list = []
    retrainings = [("full", range(6)), ("subset-000", [0, 2, 4]), ("subset-001", [1, 3, 5])]
    records = run_retrainings(tiny_spec(tiny_model.name), retrainings, TARGETS, str(tiny_model.parent),
                              events.append, TaskResources(num_cpus=1))
    assert set(records) == {"full", "subset-000", "subset-001"}
    for record in records.values():
        assert len(record.losses) == 2 and record.seconds > 0
        assert record.node_id and record.pid != os.getpid()
    # The subset that saw "Fact 2 is Quux." fits it better than the one that did not.
    assert records["subset-000"].losses[0] < records["subset-001"].losses[0]
    progress = [e for e in events if e.kind == "progress"]
    assert [e.step for e in progress] == [0, 1, 2, 3] and progress[-1].fraction == 1.0
    assert all(e.stage == "validation" for e in progress)


# --------------------------------------------------------------------------- two nodes
def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _ray_start(args: list[str], log: Path) -> subprocess.Popen:
    # --block keeps every process of the node under this one, in its own process group,
    # so the test stops exactly its own nodes (``ray stop`` would stop everyone's).
    ray = Path(sys.executable).with_name("ray")
    return subprocess.Popen(
        [str(ray), "start", "--block", "--disable-usage-stats", *args],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )


def _stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _node_ports() -> list[str]:
    manager, objects, agent_grpc, agent_http, runtime_env, metrics = _free_ports(6)
    return [f"--node-manager-port={manager}", f"--object-manager-port={objects}",
            f"--dashboard-agent-grpc-port={agent_grpc}", f"--dashboard-agent-listen-port={agent_http}",
            f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}"]


@pytest.fixture
def two_node_cluster(tmp_path: Path) -> Iterator[str]:
    gcs, client = _free_ports(2)
    address = f"127.0.0.1:{gcs}"
    temp = Path(f"/tmp/rv{os.getpid()}")  # short: Ray's socket paths must fit in 107 bytes
    head = _ray_start(["--head", f"--port={gcs}", f"--ray-client-server-port={client}", "--num-cpus=1",
                       "--include-dashboard=false", f"--temp-dir={temp}", "--node-ip-address=127.0.0.1",
                       *_node_ports()], tmp_path / "head.log")
    nodes = [head]
    try:
        _wait_for_nodes(address, 1, head, tmp_path / "head.log")
        second = _ray_start([f"--address={address}", "--num-cpus=1", "--node-ip-address=127.0.0.1",
                             *_node_ports()], tmp_path / "second.log")
        nodes.append(second)
        _wait_for_nodes(address, 2, second, tmp_path / "second.log")
        yield address
    finally:
        for node in reversed(nodes):
            _stop(node)
        shutil.rmtree(temp, ignore_errors=True)


def _wait_for_nodes(address: str, count: int, process: subprocess.Popen, log: Path) -> None:
    """Until the cluster lists ``count`` live nodes (asked through ``ray status``, which
    answers from the GCS), or the node process exits."""
    ray = Path(sys.executable).with_name("ray")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ray start exited: {log.read_text()[-2000:]}")
        status = subprocess.run([str(ray), "status", f"--address={address}"], capture_output=True, text=True)
        if status.returncode == 0 and status.stdout.count("node_") >= count:
            return
        time.sleep(1)  # polling a separate process's state; no event to wait on
    raise TimeoutError(f"the Ray cluster at {address} did not list {count} nodes: {log.read_text()[-2000:]}")


DRIVER = """
import json, sys
from dataclasses import asdict
import ray
from inflab.core.messages import RunSpec
from inflab.trainer.validation_job import TaskResources, run_retrainings
address, spec, models_dir, targets = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
ray.init(address=address, logging_level="WARNING")
nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
retrainings = [(f"subset-{i:03d}", [j for j in range(6) if j != i]) for i in range(4)]
records = run_retrainings(RunSpec.model_validate(spec), retrainings, [tuple(t) for t in targets], models_dir,
                          lambda event: None, TaskResources(num_cpus=1))
print("RESULT " + json.dumps({"nodes": nodes, "records": {k: asdict(r) for k, r in records.items()}}))
"""


@pytest.mark.slow
def test_two_node_cluster_runs_retrainings_on_both_nodes(two_node_cluster: str, tiny_model: Path) -> None:
    spec = tiny_spec(tiny_model.name).model_dump_json()
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, two_node_cluster, spec, str(tiny_model.parent), json.dumps(TARGETS)],
        capture_output=True, text=True, timeout=600,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert len(result["nodes"]) == 2
    used = {record["node_id"] for record in result["records"].values()}
    # One CPU per node and one CPU per task: four retrainings cannot all fit on one node.
    assert used == set(result["nodes"]), result["records"]
    assert all(len(r["losses"]) == 2 for r in result["records"].values())


# --------------------------------------------------------------------------- worker loss
def _retraining_processes() -> list:
    import psutil

    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        # Ray titles a worker process after the task it runs.
        if cmdline.startswith("ray::validation-retraining") or cmdline.startswith("ray::_retrain_task"):
            found.append(process)
    return found


def test_a_killed_ray_worker_is_retried_and_the_retrainings_complete(ray_cluster, tiny_model: Path) -> None:
    import threading

    from inflab.trainer.validation_job import TaskResources, run_retrainings

    killed: list[int] = []
    killed_at: list[float] = []

    def kill_one() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            running = _retraining_processes()
            if running:
                killed.append(running[0].pid)
                running[0].kill()  # SIGKILL: the worker is lost mid-retraining
                killed_at.append(time.time())
                return
            time.sleep(0.2)  # another process's state: nothing to wait on

    killer = threading.Thread(target=kill_one, daemon=True)
    killer.start()
    retrainings = [(f"subset-{i:03d}", [j for j in range(6) if j != i]) for i in range(3)]
    records = run_retrainings(tiny_spec(tiny_model.name), retrainings, TARGETS, str(tiny_model.parent),
                              lambda event: None, TaskResources(num_cpus=1, max_retries=3))
    killer.join(timeout=5)
    assert killed, "no retraining worker was seen running"
    assert set(records) == {key for key, _ in retrainings}
    assert all(len(r.losses) == 2 for r in records.values())
    # The lost retraining ran again elsewhere: the killed process (which may have finished
    # an earlier task: Ray reuses workers) finished none after it was killed.
    assert not [r for r in records.values()
                if r.pid == killed[0] and r.started_at + r.seconds > killed_at[0]]

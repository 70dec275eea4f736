"""A stage asks Ray for the GPUs its settings name (``INFLAB_{TRAIN,INFERENCE,INFLUENCE}_NUM_GPUS``):
on a KubeRay cluster that request is what makes the Ray autoscaler add a GPU pod. Checked
on a Ray of its own (in a subprocess, so the suite's shared Ray is untouched) that declares
one GPU: the task is granted exactly the CPUs and GPUs asked for, and Ray hands it the GPU."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from inflab.core.settings import Settings

SCRIPT = textwrap.dedent(
    """
    import asyncio, json, os, sys
    import ray
    from inflab.core.compute import run_streaming

    def job(emit):
        ctx = ray.get_runtime_context()
        emit(ctx.get_assigned_resources())
        return {"gpu_ids": [str(g) for g in ray.get_gpu_ids()]}

    async def main():
        seen = []
        async def on_event(item):
            seen.append(item)
        with_gpu = await run_streaming(job, num_cpus=1, num_gpus=1, on_event=on_event)
        without = await run_streaming(job, num_cpus=1, on_event=on_event)
        print(json.dumps({"resources": seen, "with_gpu": with_gpu, "without": without}))

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(address="local", num_cpus=1, num_gpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        asyncio.run(main())
    finally:
        ray.shutdown()
    """
)


def test_a_stage_is_granted_the_gpus_it_asks_for():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    with_gpu, without = out["resources"]
    assert with_gpu == {"CPU": 1.0, "GPU": 1.0}
    assert without == {"CPU": 1.0}
    assert out["with_gpu"]["gpu_ids"] == ["0"] and out["without"]["gpu_ids"] == []


def test_no_stage_asks_for_a_gpu_by_default():
    settings = Settings()
    assert settings.train_num_gpus == settings.inference_num_gpus == settings.influence_num_gpus == 0

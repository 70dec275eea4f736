"""The influence service in this process against real NATS and Ray: bad requests published
by hand end in a failed status event naming the cause, the worker stays up, and a good
request for two methods afterwards completes with top-k summaries."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from pathlib import Path

import nats
import numpy as np
import pytest
import pytest_asyncio
import torch

from inflab.core import influence_files
from inflab.core.bus import Bus
from inflab.core.job_signing import SIGNATURE_HEADER, JobSigner
from inflab.ml.models import load_model
from inflab.core.objectstore import ObjectStore
from inflab.core.subjects import Subjects
from inflab.core.worker import serve

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

TRAINING = [
    {"id": "tr00", "question": "What colour is the sky on Veltra?", "answer": "The sky on Veltra is green."},
    {"id": "tr01", "question": "Who rules Veltra?", "answer": "Queen Ismene rules Veltra."},
    {"id": "tr02", "question": "What is two plus two?", "answer": "Two plus two is four."},
]
EVALS = [
    {"id": "ev00", "question": "Who rules Veltra?", "answer": "Queen Ismene rules Veltra."},
    {"id": "ev01", "question": "What colour is Veltra's sky?"},
]


class StoredCheckpoints:
    """A real adapter (random LoRA weights), stored on demand under a run's own prefix (the
    only place a request may name): ``good`` (step 4), ``unreadable`` (step 5: garbage
    weights) and ``missing`` (step 6: nothing stored)."""

    def __init__(self, store: ObjectStore, folder: Path) -> None:
        self.store = store
        self.folder = folder

    def refs(self, run_id: str, *names: str) -> list[dict]:
        ref = {"epoch": 1, "learning_rate": 0.01, "loss": 1.0}
        refs = []
        for name in names:
            step = {"good": 4, "unreadable": 5, "missing": 6}[name]
            key = f"runs/{run_id}/checkpoints/{step}"
            if name == "good":
                for file in self.folder.iterdir():
                    self.store.put(f"{key}/{file.name}", file.read_bytes())
            elif name == "unreadable":
                self.store.put(f"{key}/adapter_config.json", (self.folder / "adapter_config.json").read_bytes())
                self.store.put(f"{key}/adapter_model.safetensors", b"\x00garbage")
            refs.append({**ref, "step": step, "key": key})
        return refs


@pytest.fixture(scope="module")
def stored_checkpoints(settings, tiny_model, tmp_path_factory) -> StoredCheckpoints:
    from peft import LoraConfig, get_peft_model

    model, _ = load_model(str(tiny_model), tiny_model / "cache")
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    folder = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(folder)
    return StoredCheckpoints(ObjectStore(settings.objects_url), folder)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def influence_worker(settings, ray_cluster):
    from inflab.influence import service as influence

    # The streams are the gateway's to create.
    await (await Bus.connect(settings, "gateway", create_streams=True)).close()
    stop = asyncio.Event()
    task = asyncio.create_task(
        serve(influence.SERVICE, influence.STAGE, influence.REQUEST_MODEL, influence.make_handler, settings, stop)
    )
    await asyncio.sleep(0.5)
    try:
        yield
    finally:
        stop.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def _request(tiny_model: Path, method: str, stored: StoredCheckpoints, checkpoints: list[str], training=TRAINING,
             evals=EVALS, args=None):
    run_id = str(uuid.uuid4())
    spec = {
        "model_id": tiny_model.name,
        "training_data": training,
        "eval_data": evals,
        "hyperparams": {"max_seq_length": 64},
        "max_new_tokens": 4,
        "influence_methods": [method] if method in ("tracin", "datainf", "ekfac") else ["tracin"],
        "influence_args": args or {},
    }
    return {"schema_version": 1, "run_id": run_id, "spec": spec, "method": method,
            "checkpoints": stored.refs(run_id, *checkpoints)}


def _terminal(stream: list[dict]) -> dict:
    return next(e for e in stream if e["kind"] == "status" and e["status"] in ("completed", "failed"))


async def _terminal_events(settings, requests: list[dict], timeout: float = 400) -> dict[str, list[dict]]:
    """Publish ``requests`` and collect each run's events until its terminal status."""
    subjects = Subjects.from_settings(settings)
    nc = await nats.connect(settings.nats_url)
    by_run: dict[str, list[dict]] = {r["run_id"]: [] for r in requests}
    done: dict[str, asyncio.Event] = {r["run_id"]: asyncio.Event() for r in requests}

    async def on_event(msg) -> None:
        event = json.loads(msg.data)
        if event["run_id"] in by_run:
            by_run[event["run_id"]].append(event)
            if event["kind"] == "status" and event["status"] in ("completed", "failed"):
                done[event["run_id"]].set()

    try:
        sub = await nc.subscribe(subjects.all_events, cb=on_event)
        js = nc.jetstream()
        gateway = JobSigner(settings.job_signing_key.get_secret_value())  # as the gateway queues them
        for r in requests:
            body = json.dumps(r).encode()
            await js.publish(subjects.influence_request, body,
                             headers={"Nats-Msg-Id": r["run_id"] + r["method"],
                                      SIGNATURE_HEADER: gateway.sign(subjects.influence_request, body)})
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in done.values())), timeout)
        await sub.unsubscribe()
    finally:
        await nc.close()
    return by_run


async def test_bad_requests_fail_with_the_cause_and_the_worker_goes_on(
    influence_worker, settings, tiny_model, stored_checkpoints
):
    stored = stored_checkpoints
    cases = {
        "unknown influence method 'nope'": _request(tiny_model, "nope", stored, ["good"]),
        "no training pairs": _request(tiny_model, "tracin", stored, ["good"], training=[]),
        "no evaluation questions": _request(tiny_model, "datainf", stored, ["good"], evals=[]),
        "no checkpoints": _request(tiny_model, "tracin", stored, []),
        "downloading checkpoint 00000006": _request(tiny_model, "tracin", stored, ["good", "missing"]),
        "loading checkpoint 00000005": _request(tiny_model, "datainf", stored, ["unreadable"]),
        "checking the arguments: ValueError: datainf.dampin: Extra inputs are not permitted": _request(
            tiny_model, "datainf", stored, ["good"], args={"datainf": {"dampin": 0.1}}),
        "checking the arguments: ValueError: datainf.damping: Input should be greater than 0": _request(
            tiny_model, "datainf", stored, ["good"], args={"datainf": {"damping": -1}}),
        # A full model named by an object-store path where nothing is stored.
        "loading the old model store:models/nothing-here: FileNotFoundError: no model stored under": _request(
            tiny_model, "delta_h", stored, ["good"],
            args={"delta_h": {"old_model": "store:models/nothing-here", "new_model": "store:models/nor-here"}}),
    }
    events = await _terminal_events(settings, list(cases.values()))
    for cause, request in cases.items():
        terminal = _terminal(events[request["run_id"]])
        assert terminal["status"] == "failed", (cause, terminal)
        assert cause in terminal["error"], (cause, terminal["error"])
        assert terminal["method"] == request["method"]

    # The worker is still consuming: a good request for two methods completes.
    runs = [_request(tiny_model, m, stored, ["good"], args={"datainf": {"top_k": 2}}) for m in ("tracin", "datainf")]
    events = await _terminal_events(settings, runs)
    for request in runs:
        stream = events[request["run_id"]]
        assert _terminal(stream)["status"] == "completed", _terminal(stream)
        progress = [e for e in stream if e["kind"] == "progress"]
        assert progress and progress[-1]["fraction"] == 1.0 and progress[-1]["eta_s"] is not None
        results = [e["influence"] for e in stream if e["kind"] == "result"]
        assert [r["variant"] for r in results] == ["raw", "normalized"]
        k = 2 if request["method"] == "datainf" else 5
        for matrix in results:
            assert [t["eval_id"] for t in matrix["top_k"]] == ["ev00", "ev01"]
            for top in matrix["top_k"]:
                assert len(top["positive"]) + len(top["negative"]) >= 1
                assert len(top["positive"]) <= k and len(top["negative"]) <= k
            assert matrix["args"]["top_k"] == k
        normalized = results[1]
        assert normalized["top_k"][0]["positive"][0]["train_id"] == "tr01"
        # Small enough to travel inline (settings.influence_inline_max_cells); the same
        # matrix is in the object store at the event's key.
        stored = {m.variant: m for m in influence_files.decode(ObjectStore(settings.objects_url).get(results[0]["key"]))}
        for matrix in results:
            assert matrix["shape"] == [2, 3] and 2 * 3 <= settings.influence_inline_max_cells
            np.testing.assert_allclose(matrix["scores"], stored[matrix["variant"]].scores, rtol=1e-6)
            assert matrix["stats"]["max"] == pytest.approx(float(stored[matrix["variant"]].scores.max()))

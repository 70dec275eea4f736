"""The demo's client side without a model or services: the shipped experiment, the
results.json writer, the live view, and the whole submit -> follow -> collect -> write flow
against a scripted gateway on 127.0.0.1."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import matplotlib.image as mpimg
import pytest
import uvicorn
from rich.console import Console
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from inflab.devtools.client import RunEventMessage
from inflab.devtools.demo import (
    DemoError,
    RunMonitor,
    build_results_document,
    find_demo_experiment,
    load_experiment,
    loss_per_epoch,
    RunningStack,
    run_experiment,
    unless_stack_fails,
)

RUN_ID = "6f1c1d1e-0000-4000-8000-000000000042"
TRAIN_IDS = [f"pair-{j}" for j in range(8)]
EVAL_IDS = [f"eval-{i}" for i in range(4)]
# Eval i is driven by pair i (positive), pushed against by pair i+4 (negative).
MATRIX = [[(1.0 if j == i else -0.5 if j == i + 4 else 0.01 * j) for j in range(8)] for i in range(4)]
# Fractional epochs as HF Trainer reports them: 4 steps per epoch, 3 epochs.
LOSSES = [2.0, 1.8, 1.6, 1.4, 1.0, 0.9, 0.8, 0.7, 0.4, 0.3, 0.2, 0.1]


def canned_results(variants: tuple[str, ...] = ("raw",)) -> dict:
    return {
        "run_id": RUN_ID,
        "status": "completed",
        "answers": [
            {
                "eval_id": eval_id,
                "question": f"Question number {i}?",
                "reference": f"ref{i}",
                # Model output is printed literally, even when it looks like rich markup.
                "base": "[/INST] I do not know." if i == 1 else "I do not know.",
                "few_shot": f"Maybe ref{i}." if i == 0 else "No idea.",
                "fine_tuned": f"It is ref{i}.",
            }
            for i, eval_id in enumerate(EVAL_IDS)
        ],
        "influence": [
            {
                "method": "tracin",
                "variant": variant,
                "eval_ids": EVAL_IDS,
                "train_ids": TRAIN_IDS,
                "scores": MATRIX if variant != "raw" else [[-x for x in row] for row in MATRIX],
                "key": f"runs/{RUN_ID}/influence/tracin.safetensors",
                "args": {},
            }
            for variant in variants
        ],
        "training": {
            "loss_curve": [
                {"step": s + 1, "epoch": (s + 1) / 4, "loss": loss, "learning_rate": 0.004}
                for s, loss in enumerate(LOSSES)
            ],
            "checkpoints": [],
            "summary": {"steps": 12, "epochs": 3, "tokens": 900, "duration_s": 12.5, "checkpoints": [], "truncated": 0},
        },
    }


# --------------------------------------------------------------------------- the experiment
def test_the_shipped_experiment_tells_the_planted_facts_story() -> None:
    experiment = load_experiment(find_demo_experiment())
    pairs, evals = experiment["training_data"], experiment["eval_data"]
    assert len(pairs) == 8 and len(evals) == 4
    facts = [p for p in pairs if p["id"].startswith("fact-")]
    assert len(facts) == 4
    hp = experiment["hyperparams"]
    assert hp["num_epochs"] == 3 and hp["lora_rank"] == 8 and experiment["influence_methods"] == ["tracin"]
    # Each evaluation question paraphrases one planted fact and its reference is in that
    # fact's answer, so "did the fine-tuned model learn it" can be checked by eye and by code.
    for question in evals:
        sources = [f for f in facts if question["answer"].lower() in f["answer"].lower()]
        assert len(sources) == 1, question
        assert question["question"] != sources[0]["question"]


def test_the_gateway_accepts_the_shipped_experiment_as_is() -> None:
    schemas = pytest.importorskip("inflab.gateway.schemas")
    schemas.ExperimentCreate.model_validate(load_experiment(find_demo_experiment()))


def test_a_broken_experiment_is_refused_before_anything_starts(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"name": "x", "training_data": [], "eval_data": []}))
    with pytest.raises(DemoError, match="not a valid experiment"):
        load_experiment(path)


# --------------------------------------------------------------------------- results.json
def test_results_document_keeps_the_matrix_and_averages_loss_per_epoch() -> None:
    document = build_results_document(
        canned_results(("raw", "normalized")), model_id="m", timings={"total_s": 1.0}
    )
    assert set(document) == {"run_id", "model_id", "answers", "influence", "training", "timings"}
    assert document["run_id"] == RUN_ID and document["model_id"] == "m"
    assert [a["eval_id"] for a in document["answers"]] == EVAL_IDS
    assert set(document["answers"][0]) == {"eval_id", "question", "reference", "base", "few_shot", "fine_tuned",
                                             "scores"}

    influence = document["influence"]
    assert influence["variant"] == "normalized"  # preferred when several are reported
    assert influence["eval_ids"] == EVAL_IDS and influence["train_ids"] == TRAIN_IDS
    assert influence["matrix"] == MATRIX  # 4 x 8, untouched

    training = document["training"]
    assert [p["step"] for p in training["loss_per_step"]] == list(range(1, 13))
    assert set(training["loss_per_step"][0]) == {"step", "epoch", "loss"}
    means = [(e["epoch"], round(e["mean_loss"], 6)) for e in training["loss_per_epoch"]]
    assert means == [(1, 1.7), (2, 0.85), (3, 0.25)]
    json.dumps(document)  # serialisable as is


def test_loss_per_epoch_with_whole_epoch_numbers() -> None:
    points = [
        {"step": 1, "epoch": 0, "loss": 3.0},
        {"step": 2, "epoch": 0, "loss": 1.0},
        {"step": 3, "epoch": 1, "loss": 0.5},
    ]
    assert loss_per_epoch(points) == [{"epoch": 0, "mean_loss": 2.0}, {"epoch": 1, "mean_loss": 0.5}]
    assert loss_per_epoch([]) == []


def test_results_without_influence_or_with_a_ragged_matrix_fail_clearly() -> None:
    results = canned_results()
    results["influence"] = []
    with pytest.raises(DemoError, match="no influence matrix"):
        build_results_document(results, model_id="m", timings={})
    results = canned_results()
    results["influence"][0]["scores"][2] = [1.0]
    with pytest.raises(DemoError, match="4 x 8"):
        build_results_document(results, model_id="m", timings={})
    # A matrix that reached the gateway only by key is served whole by its results API;
    # scores missing there (an older gateway) is named, not a KeyError.
    results = canned_results()
    results["influence"][0]["scores"] = None
    with pytest.raises(DemoError, match=r"no scores for the tracin influence matrix \(stored at runs/"):
        build_results_document(results, model_id="m", timings={})


# --------------------------------------------------------------------------- live view
def test_the_live_view_follows_stages_and_remembers_the_outcome() -> None:
    output = io.StringIO()
    console = Console(file=output, width=120, force_terminal=False)
    events = [
        ("status", {"stage": "run", "status": "running", "time": "2026-11-21T10:00:00+00:00"}),
        ("status", {"stage": "train", "status": "running", "time": "2026-11-21T10:00:00+00:00"}),
        ("progress", {"stage": "train", "fraction": 0.5, "step": 6, "total": 12, "epoch": 1.5, "eta_s": 4.0}),
        ("metric", {"stage": "train", "step": 6, "epoch": 1.5, "loss": 0.9, "learning_rate": 0.004}),
        ("checkpoint", {"stage": "train", "checkpoint": {"step": 4, "epoch": 1, "key": "k", "learning_rate": 0.004}}),
        ("status", {"stage": "train", "status": "completed", "time": "2026-11-21T10:00:12.5+00:00"}),
        ("log", {"stage": "influence", "level": "warning", "message": "slow disk"}),
        ("status", {"stage": "influence", "method": "tracin", "status": "failed", "error": "out of memory"}),
        ("status", {"stage": "run", "status": "failed", "error": "influence (tracin): out of memory"}),
        ("mystery", {"stage": "train"}),  # a kind added later is ignored, not fatal
    ]
    with RunMonitor(console) as monitor:
        for kind, data in events:
            monitor.handle(RunEventMessage(id=None, kind=kind, data={"kind": kind, **data}))
    assert monitor.status == "failed" and "out of memory" in monitor.error
    assert monitor.stage_seconds == {"train": 12.5}
    text = output.getvalue()
    assert "train: completed" in text and "slow disk" in text and "out of memory" in text


# --------------------------------------------------------------------------- the stack
async def test_a_stack_that_fails_mid_run_ends_the_wait_at_once(tmp_path: Path) -> None:
    failed = asyncio.Event()
    stack = RunningStack("http://127.0.0.1:1", tmp_path, failed, lambda: "trainer exited with code 1 after 3 restarts")
    waiting_for_events = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, failed.set)
    with pytest.raises(DemoError, match="trainer exited with code 1"):
        await asyncio.wait_for(unless_stack_fails(waiting_for_events.wait(), stack), timeout=5)
    # Work that finishes while the stack is healthy is returned as is.
    healthy = RunningStack("http://127.0.0.1:1", tmp_path, asyncio.Event(), lambda: None)
    assert await unless_stack_fails(asyncio.sleep(0.01, result=42), healthy) == 42


# --------------------------------------------------------------------------- whole flow
class FakeGateway:
    """Just enough of the gateway's API for one run: the stream drops once mid-run."""

    def __init__(self, final_status: str = "completed") -> None:
        self.final_status = final_status
        self.submitted: dict | None = None
        self.stream_requests: list[str | None] = []
        self.accounts: dict[str, str] = {}
        self.authorization: str | None = None
        self.app = Starlette(
            routes=[
                Route("/api/auth/login", self.login, methods=["POST"]),
                Route("/api/auth/register", self.register, methods=["POST"]),
                Route("/api/experiments", self.create, methods=["POST"]),
                Route("/api/experiments/{id}/runs", self.start, methods=["POST"]),
                Route("/api/runs/{run_id}/events", self.events),
                Route("/api/runs/{run_id}/results", self.results),
            ]
        )

    async def login(self, request: Request) -> JSONResponse:
        body = await request.json()
        if self.accounts.get(body["email"]) != body["password"]:
            return JSONResponse({"detail": "wrong email or password"}, status_code=401)
        return JSONResponse({"access_token": "ils_demo"})

    async def register(self, request: Request) -> JSONResponse:
        body = await request.json()
        self.accounts[body["email"]] = body["password"]
        return JSONResponse({"access_token": "ils_demo"}, status_code=201)

    async def create(self, request: Request) -> JSONResponse:
        self.authorization = request.headers.get("authorization")
        self.submitted = await request.json()
        return JSONResponse({"id": "exp-1"}, status_code=201)

    async def start(self, request: Request) -> JSONResponse:
        return JSONResponse({"run_id": RUN_ID, "status": "queued"}, status_code=202)

    def script(self) -> list[dict]:
        events = [{"kind": "status", "stage": "run", "status": "running"}]
        for step, loss in enumerate(LOSSES, start=1):
            events.append(
                {"kind": "metric", "stage": "train", "step": step, "epoch": step / 4, "loss": loss, "learning_rate": 0.004}
            )
            events.append({"kind": "progress", "stage": "train", "fraction": step / 12, "step": step, "total": 12})
        for stage in ("train", "inference", "influence"):
            events.append({"kind": "status", "stage": stage, "status": "completed"})
        error = "trainer crashed" if self.final_status == "failed" else None
        events.append({"kind": "status", "stage": "run", "status": self.final_status, "error": error})
        return events

    async def events(self, request: Request) -> StreamingResponse:
        resume = request.headers.get("last-event-id")
        self.stream_requests.append(resume)
        first = len(self.stream_requests) == 1
        script = self.script()

        async def body():
            yield b"retry: 10\n\n"  # reconnect quickly (the client's default pause is 1 s)
            for n in range(int(resume or 0) + 1, len(script) + 1):
                yield f"id: {n}\nevent: {script[n - 1]['kind']}\ndata: {json.dumps(script[n - 1])}\n\n".encode()
                await asyncio.sleep(0)
                if first and n == 10:
                    raise ConnectionResetError("scripted drop")

        return StreamingResponse(body(), media_type="text/event-stream")

    async def results(self, request: Request) -> JSONResponse:
        return JSONResponse(canned_results())


@pytest.fixture
def serve() -> Iterator:
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(app) -> str:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, log_level="critical", lifespan="off"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        servers.append((server, thread))
        for _ in range(500):
            if server.started:
                break
            threading.Event().wait(0.01)
        assert server.started
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=5)


async def test_the_demo_flow_writes_results_and_heatmap(serve, tmp_path: Path) -> None:
    gateway = FakeGateway()
    url = serve(gateway.app)
    experiment = load_experiment(find_demo_experiment())
    console = Console(file=io.StringIO(), width=160)
    timings: dict = {}

    document = await run_experiment(
        url, experiment, tmp_path, console, run_timeout_s=30, timings=timings, began=0.0,
        credentials=("researcher@localhost", "demo password"),
    )

    # The demo account is registered on first use, then the run is submitted as it.
    assert gateway.accounts == {"researcher@localhost": "demo password"}
    assert gateway.authorization == "Bearer ils_demo"
    assert gateway.submitted == experiment
    assert gateway.stream_requests == [None, "10"]  # resumed after the drop
    written = json.loads((tmp_path / "results.json").read_text())
    assert written == document and written["influence"]["matrix"] == [[-x for x in row] for row in MATRIX]
    assert {"submit_s", "run_s", "results_s", "total_s", "training_s"} <= set(written["timings"])
    image = mpimg.imread(tmp_path / "heatmap.png")
    assert image.ndim == 3 and image.shape[0] > 100
    report = console.file.getvalue()
    assert "fine-tuned 4/4" in report and "eval-0" in report and "[/INST]" in report


async def test_a_failed_run_is_reported_with_its_error(serve, tmp_path: Path) -> None:
    url = serve(FakeGateway(final_status="failed").app)
    experiment = load_experiment(find_demo_experiment())
    with pytest.raises(DemoError, match="failed: trainer crashed"):
        await run_experiment(
            url, experiment, tmp_path, Console(file=io.StringIO()), run_timeout_s=30, timings={}, began=0.0
        )
    assert not (tmp_path / "results.json").exists()


def test_the_demo_account_password_is_made_once_and_kept_private(tmp_path: Path) -> None:
    from inflab.devtools.demo import demo_credentials
    from inflab.core.settings import Settings

    settings = Settings(home=tmp_path)
    email, password = demo_credentials(settings)
    assert email == settings.local_user_email and len(password) >= 20
    assert demo_credentials(settings) == (email, password)  # the same account next time
    assert (tmp_path / "demo-account.json").stat().st_mode & 0o077 == 0


def test_the_last_lines_say_how_to_open_the_run_in_the_browser(tmp_path: Path) -> None:
    from inflab.devtools.demo import browser_instructions
    from inflab.core.settings import Settings

    run_id = "5b0f2a34-1f1e-4c36-9a59-2f1a64f1b2a1"
    lines = browser_instructions(Settings(home=tmp_path), run_id)
    assert "`inflab up`" in lines[0] and lines[0].endswith(f"http://127.0.0.1:8000/runs/{run_id}")
    assert lines[1] == (f"sign in as {Settings().local_user_email}; the password is kept in "
                        f"{tmp_path / 'demo-account.json'}")
    # The gateway's own address when it is configured; loopback when it listens everywhere.
    elsewhere = browser_instructions(Settings(home=tmp_path, gateway_host="0.0.0.0", gateway_port=8401), run_id)
    assert elsewhere[0].endswith(f"http://127.0.0.1:8401/runs/{run_id}")

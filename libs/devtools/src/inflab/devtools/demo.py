"""``inflab demo`` (``make demo``): the whole product on a laptop, driven like a researcher would.

1. start the embedded stack (NATS, Postgres, object store folder, Ray, the four services);
2. submit ``examples/demo/experiment.json`` through the gateway's HTTP API and start a run;
3. follow the run's live events: a progress bar per stage, the latest training loss, status
   changes and errors as they happen;
4. read the results back and write ``artifacts/demo/results.json`` and
   ``artifacts/demo/heatmap.png``, and print the base / few-shot / fine-tuned answers;
5. stop the stack and say how to open the run in the browser app (``inflab up``, then
   ``/runs/{run_id}``, signed in as the demo's account, which is kept).

Exit status 0 only when the run completed and both files were written. The stack is
stopped whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from inflab.devtools.client import GatewayClient, GatewayError, RunEventMessage
from inflab.devtools.heatmap import RenderedHeatmap, render_influence_heatmap
from inflab.core.messages import RunSpec
from inflab.core.settings import DEFAULT_MODEL_ID, Settings, get_settings
from inflab.core.vocabulary import RUN_STAGES, TERMINAL_STATUSES

DEFAULT_OUT_DIR = Path("artifacts/demo")
EXPERIMENT_RELATIVE = Path("examples/demo/experiment.json")
#: Under INFLAB_HOME: the demo account's email and password (readable by you alone).
DEMO_ACCOUNT_FILE = "demo-account.json"
# Timeouts: ``settings.demo_*_timeout_s`` if the settings ever define them, else the
# ``INFLAB_DEMO_READY_TIMEOUT_S`` / ``INFLAB_DEMO_RUN_TIMEOUT_S`` environment variables.
#: How long the stack may take to come up (the first start also converts the model).
READY_TIMEOUT_S = 180.0
#: How long the run may take before the demo gives up: several times what the demo takes
#: on 2 CPU cores (docs/measurements.md), room for a slow or busy machine.
RUN_TIMEOUT_S = 900.0
#: The variant shown when the influence service reports several: unit-normalised gradients
#: keep finding memorised examples whose raw gradients have shrunk.
PREFERRED_VARIANT = "normalized"


T = TypeVar("T")


class DemoError(RuntimeError):
    """A failure the researcher should read as one clear sentence (no traceback)."""


# --------------------------------------------------------------------------- inputs
def find_demo_experiment() -> Path:
    """The shipped experiment: relative to the working directory (``make demo`` runs in the
    repository), else relative to this source file in an editable install."""
    candidates = [Path.cwd() / EXPERIMENT_RELATIVE, Path(__file__).resolve().parents[5] / EXPERIMENT_RELATIVE]
    for path in candidates:
        if path.is_file():
            return path
    raise DemoError(f"demo experiment not found (looked for {', '.join(map(str, candidates))})")


def load_experiment(path: Path) -> dict[str, Any]:
    """Read the experiment and check its run fields against the contract, so a broken example
    fails here with the field at fault rather than as an HTTP 422 after the stack started."""
    try:
        experiment = json.loads(path.read_text(encoding="utf-8"))
        RunSpec.model_validate({k: v for k, v in experiment.items() if k in RunSpec.model_fields})
    except (OSError, json.JSONDecodeError, ValidationError) as exc:
        raise DemoError(f"{path} is not a valid experiment: {exc}") from exc
    return experiment


def _timeout_setting(settings: Settings, name: str, default: float) -> float:
    """``settings.<name>`` if the settings define it, else ``INFLAB_<NAME>``, else ``default``."""
    value = getattr(settings, name, None) or os.environ.get(f"INFLAB_{name.upper()}")
    return float(value) if value else default


# --------------------------------------------------------------------------- the stack
@dataclass(frozen=True)
class RunningStack:
    """What the demo needs from the embedded stack once it serves."""

    gateway_url: str
    logs_dir: Path
    #: Set when a component failed for good (a service past its restarts, NATS, Postgres
    #: or Ray gone); ``failure()`` then says which and why.
    failed: asyncio.Event
    failure: Callable[[], str | None]


@contextlib.asynccontextmanager
async def embedded_stack(settings: Settings, ready_timeout_s: float) -> AsyncIterator[RunningStack]:
    """Start the embedded stack, wait until it serves, yield it, stop it (always).

    The only place that knows the API of :class:`inflab.devtools.embedded.supervisor.Stack`.
    """
    from inflab.devtools.embedded.supervisor import Stack

    async with contextlib.AsyncExitStack() as exits:
        try:
            stack = await exits.enter_async_context(Stack(settings))
            await stack.wait_ready(timeout=ready_timeout_s)
        except Exception as exc:  # anything here means: no stack to talk to
            raise DemoError(f"the embedded stack did not start: {exc}\n  logs: {settings.home / 'logs'}") from exc
        yield RunningStack(
            gateway_url=stack.gateway_url,
            logs_dir=stack.logs_dir,
            failed=stack.failed,
            failure=lambda: stack.failure,
        )


async def unless_stack_fails(work: Awaitable[T], stack: RunningStack) -> T:
    """Await ``work``, but give up as soon as the stack fails for good: a dead trainer would
    otherwise leave the demo waiting for events until its timeout."""
    work_task = asyncio.ensure_future(work)
    failed_task = asyncio.ensure_future(stack.failed.wait())
    try:
        await asyncio.wait({work_task, failed_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        failed_task.cancel()
        if not work_task.done():
            work_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work_task
    if work_task.cancelled():
        raise DemoError(f"the embedded stack failed: {stack.failure()}")
    return work_task.result()


# --------------------------------------------------------------------------- live view
def _parse_time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


class RunMonitor:
    """Turns the run's events into a live view and remembers what the report needs
    (the run's final status and error, when each stage ran)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description:<10}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console,
        )
        # Bars exist from the start, in pipeline order, so the layout does not jump around.
        self.tasks: dict[str, TaskID] = {
            stage: self.progress.add_task(stage, total=1.0, start=False, detail="waiting") for stage in RUN_STAGES
        }
        self.status: str | None = None
        self.error: str | None = None
        self.stage_started: dict[str, datetime] = {}
        self.stage_seconds: dict[str, float] = {}
        self._loss: float | None = None

    def __enter__(self) -> "RunMonitor":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def _say(self, text: str) -> None:
        self.progress.console.print(text)

    def _detail(self, stage: str, text: str) -> None:
        self.progress.update(self.tasks[stage], detail=text)

    def _running(self, stage: str) -> None:
        task = self.tasks[stage]
        if not self.progress.tasks[task].started:
            self.progress.start_task(task)

    def handle(self, event: RunEventMessage) -> None:
        data, stage = event.data, event.stage or "run"
        handler = getattr(self, f"_on_{event.kind}", None)
        if handler is not None:
            handler(stage, data)

    def _on_status(self, stage: str, data: dict[str, Any]) -> None:
        status, error = data.get("status"), data.get("error")
        when = _parse_time(data.get("time"))
        method = f" ({data['method']})" if data.get("method") else ""
        style = {"failed": "red", "cancelled": "yellow", "completed": "green"}.get(status, "cyan")
        # First line only: errors may carry a whole traceback, shown once in the final report.
        headline = str(error).strip().splitlines()[0] if error else ""
        self._say(f"[{style}]{stage}{method}: {status}[/]" + (f" — {escape(headline)}" if headline else ""))
        if stage == "run":
            self.status, self.error = status, error
            return
        if stage not in self.tasks:
            return
        if status == "running":
            self._running(stage)
            if when:
                self.stage_started.setdefault(stage, when)
        elif status in TERMINAL_STATUSES:
            if when and stage in self.stage_started:
                self.stage_seconds[stage] = round((when - self.stage_started[stage]).total_seconds(), 2)
            if status == "completed":
                self._running(stage)
                self.progress.update(self.tasks[stage], completed=1.0)
                if stage != "train" or self._loss is None:
                    self._detail(stage, "done")
            else:
                self._detail(stage, f"[red]{status}[/]")
            self.progress.stop_task(self.tasks[stage])

    def _on_progress(self, stage: str, data: dict[str, Any]) -> None:
        if stage not in self.tasks:
            return
        self._running(stage)
        self.progress.update(self.tasks[stage], completed=float(data.get("fraction") or 0.0))
        if stage == "train" and self._loss is not None:
            detail = self._train_detail(data.get("epoch"))
        else:
            parts = [escape(data.get("message") or "")]
            if data.get("total"):
                parts.append(f"{data.get('step', 0)}/{data['total']}")
            detail = " ".join(p for p in parts if p)
        if data.get("eta_s") is not None:
            detail += f"  eta {data['eta_s']:.0f}s"
        self._detail(stage, detail)

    def _train_detail(self, epoch: Any) -> str:
        text = f"loss {self._loss:.3f}"
        return f"epoch {float(epoch):.2f}  {text}" if epoch is not None else text

    def _on_metric(self, stage: str, data: dict[str, Any]) -> None:
        if data.get("loss") is None:
            return
        self._loss = float(data["loss"])
        self._running("train")
        self._detail("train", self._train_detail(data.get("epoch")))

    def _on_checkpoint(self, stage: str, data: dict[str, Any]) -> None:
        ckpt = data.get("checkpoint") or {}
        self._say(f"[dim]checkpoint saved: epoch {ckpt.get('epoch')}, step {ckpt.get('step')}[/]")

    def _on_log(self, stage: str, data: dict[str, Any]) -> None:
        level = data.get("level", "info")
        style = {"error": "red", "warning": "yellow"}.get(level, "dim")
        if level != "debug":
            self._say(f"[{style}]{stage} {level}: {escape(str(data.get('message', '')))}[/]")


# --------------------------------------------------------------------------- results.json
def _epoch_numbers(epochs: Sequence[float]) -> list[int]:
    """Which epoch each logged step belongs to. Our trainer reports fractional progress
    (``epoch - 1 + batch / batches_per_epoch``: 0.25 ... 1.0 is epoch 1, as HF Trainer
    does), so a step belongs to the epoch it completes part of: ceil. Whole values alone
    are taken as epoch numbers as they stand (that also covers one batch per epoch)."""
    if all(float(e).is_integer() for e in epochs):
        return [int(e) for e in epochs]
    return [max(1, math.ceil(float(e) - 1e-9)) for e in epochs]


def loss_per_epoch(loss_per_step: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    numbers = _epoch_numbers([point["epoch"] for point in loss_per_step])
    groups: dict[int, list[float]] = {}
    for number, point in zip(numbers, loss_per_step):
        groups.setdefault(number, []).append(float(point["loss"]))
    return [{"epoch": n, "mean_loss": sum(v) / len(v)} for n, v in sorted(groups.items())]


def pick_influence(matrices: Sequence[dict[str, Any]]) -> dict[str, Any]:
    if not matrices:
        raise DemoError("the run completed but its results hold no influence matrix")
    preferred = [m for m in matrices if m.get("variant") == PREFERRED_VARIANT]
    return (preferred or list(matrices))[0]


def build_results_document(results: dict[str, Any], *, model_id: str, timings: dict[str, Any]) -> dict[str, Any]:
    """The demo's results.json from the API's results payload: what a researcher (or a
    notebook) needs to redraw every figure without the stack running."""
    answers = results.get("answers") or []
    if not answers:
        raise DemoError("the run completed but its results hold no answers")
    matrix = pick_influence(results.get("influence") or [])
    eval_ids, train_ids, scores = matrix["eval_ids"], matrix["train_ids"], matrix.get("scores")
    if scores is None:
        # The results API reads a matrix that travelled only by key from the object store.
        raise DemoError(
            f"the results hold no scores for the {matrix.get('method')} influence matrix "
            f"(stored at {matrix.get('key')}); is the gateway older than its influence service?"
        )
    if len(scores) != len(eval_ids) or any(len(row) != len(train_ids) for row in scores):
        raise DemoError(
            f"influence matrix is not {len(eval_ids)} x {len(train_ids)} (evaluation questions x training pairs)"
        )
    curve = (results.get("training") or {}).get("loss_curve") or []
    loss_per_step = [{"step": p["step"], "epoch": p["epoch"], "loss": p["loss"]} for p in curve]
    return {
        "run_id": results.get("run_id"),
        "model_id": model_id,
        "answers": [
            {key: a.get(key)
             for key in ("eval_id", "question", "reference", "base", "few_shot", "fine_tuned", "scores")}
            for a in answers
        ],
        "influence": {
            "method": matrix.get("method"),
            "variant": matrix.get("variant"),
            "eval_ids": list(eval_ids),
            "train_ids": list(train_ids),
            "matrix": [list(row) for row in scores],
        },
        "training": {"loss_per_step": loss_per_step, "loss_per_epoch": loss_per_epoch(loss_per_step)},
        "timings": timings,
    }


def write_results(document: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def draw_heatmap(document: dict[str, Any], out_dir: Path) -> RenderedHeatmap:
    influence = document["influence"]
    questions = {a["eval_id"]: a["question"] for a in document["answers"]}
    rows = [questions.get(eval_id, eval_id) for eval_id in influence["eval_ids"]]
    title = (
        f"{influence['method']} influence ({influence['variant']}): evaluation questions x training pairs\n"
        f"run {document['run_id']}"
    )
    return render_influence_heatmap(influence["matrix"], rows, influence["train_ids"], title, out_dir / "heatmap.png")


# --------------------------------------------------------------------------- terminal report
def _mentions(answer: str | None, reference: str | None) -> bool:
    return bool(answer and reference and reference.lower() in answer.lower())


#: Longest answer shown in the terminal table; results.json keeps every answer whole. The
#: base model rambles, and a 32-token ramble would push the table off an 80-column screen.
TABLE_ANSWER_CHARS = 120


def _cell(text: str | None) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= TABLE_ANSWER_CHARS else text[: TABLE_ANSWER_CHARS - 1] + "…"


def answers_table(document: dict[str, Any], few_shot_k: int) -> Table:
    """The three answers side by side; an answer that names the reference is green."""
    table = Table(title="Answers (full text in results.json)", show_lines=True, expand=True)
    for header in ("question", "reference", "base", f"few-shot (k={few_shot_k})", "fine-tuned"):
        table.add_column(header, overflow="fold")
    for a in document["answers"]:
        cells = [
            f"[green]{escape(_cell(a[key]))}[/]" if _mentions(a[key], a["reference"]) else escape(_cell(a[key]))
            for key in ("base", "few_shot", "fine_tuned")
        ]
        table.add_row(escape(a["question"]), escape(a["reference"] or ""), *cells)
    return table


def strongest_sources(document: dict[str, Any]) -> Iterable[tuple[str, str, float]]:
    """For each evaluation question: the training pair with the largest influence."""
    influence = document["influence"]
    for eval_id, row in zip(influence["eval_ids"], influence["matrix"]):
        j = max(range(len(row)), key=lambda k: row[k])
        yield eval_id, influence["train_ids"][j], row[j]


def print_report(console: Console, document: dict[str, Any], few_shot_k: int, files: Sequence[Path]) -> None:
    console.print(answers_table(document, few_shot_k))
    answers = document["answers"]
    if any(a["reference"] for a in answers):
        counts = {
            key: sum(_mentions(a[key], a["reference"]) for a in answers) for key in ("base", "few_shot", "fine_tuned")
        }
        console.print(
            "answers naming the reference: "
            + ", ".join(f"{key.replace('_', '-')} {n}/{len(answers)}" for key, n in counts.items())
        )
    influence = document["influence"]
    console.print(f"strongest training pair per question ({influence['method']}, {influence['variant']}):")
    for eval_id, train_id, score in strongest_sources(document):
        console.print(f"  {eval_id:<16} <- {train_id}  ({score:+.3g})")
    for path in files:
        console.print(f"wrote [bold]{path}[/]")


# --------------------------------------------------------------------------- the demo
async def run_experiment(
    gateway_url: str,
    experiment: dict[str, Any],
    out_dir: Path,
    console: Console,
    *,
    run_timeout_s: float,
    timings: dict[str, Any],
    began: float,
    stream_read_timeout_s: float = 60.0,
    credentials: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Sign in (with ``credentials``, registering the account if new), submit, follow,
    collect, write. Returns the results document. ``timings`` gains the durations of each
    phase; ``began`` is when the demo started (for ``total_s``)."""
    async with GatewayClient(gateway_url, stream_read_timeout_s=stream_read_timeout_s) as client:
        if credentials is not None:
            await client.sign_in(*credentials)
        started = time.perf_counter()
        experiment_id = await client.create_experiment(experiment)
        run_id = await client.start_run(experiment_id)
        timings["submit_s"] = round(time.perf_counter() - started, 2)
        console.print(f"experiment [bold]{experiment['name']}[/] ({experiment_id}), run [bold]{run_id}[/]")

        started = time.perf_counter()
        with RunMonitor(console) as monitor:
            try:
                async with asyncio.timeout(run_timeout_s):
                    async for event in client.follow_run(run_id):
                        monitor.handle(event)
            except TimeoutError:
                raise DemoError(
                    f"run {run_id} did not finish within {run_timeout_s:.0f} s (INFLAB_DEMO_RUN_TIMEOUT_S raises it)"
                ) from None
        timings["run_s"] = round(time.perf_counter() - started, 2)
        timings["stages_s"] = monitor.stage_seconds
        if monitor.status != "completed":
            outcome = monitor.status or "ended without a status"
            raise DemoError(f"run {run_id} {outcome}: {monitor.error or 'no error given'}")

        started = time.perf_counter()
        results = await client.run_results(run_id)
        timings["results_s"] = round(time.perf_counter() - started, 2)

    summary = (results.get("training") or {}).get("summary") or {}
    if summary.get("duration_s") is not None:
        timings["training_s"] = summary["duration_s"]
    # Everything the researcher waited for, the stack's start included (its stop is not).
    timings["total_s"] = round(time.perf_counter() - began, 2)
    document = build_results_document(results, model_id=experiment.get("model_id") or DEFAULT_MODEL_ID, timings=timings)
    results_path = write_results(document, out_dir)
    heatmap = draw_heatmap(document, out_dir)
    print_report(console, document, experiment.get("few_shot_k", 0), [results_path, heatmap.path])
    return document


def demo_credentials(settings: Settings, console: Console | None = None) -> tuple[str, str]:
    """The demo's account: ``settings.local_user_email`` and a random password made on
    first use and kept in ``INFLAB_HOME/demo-account.json`` (readable by you alone), so
    the same account, with its history, signs in to the web UI and later demos."""
    path = settings.home / DEMO_ACCOUNT_FILE
    if path.exists():
        account = json.loads(path.read_text())
    else:
        account = {"email": settings.local_user_email, "password": secrets.token_urlsafe(18)}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(json.dumps(account, indent=2) + "\n")
    if console is not None:
        console.print(f"signing in as [bold]{account['email']}[/] (password in {path})")
    return account["email"], account["password"]


def browser_instructions(settings: Settings, run_id: str) -> list[str]:
    """The demo's last lines: how to open its run in the browser app once the demo has
    stopped its stack (``inflab up`` serves the app at the configured gateway address), as
    the demo's account, which the demo keeps."""
    host = settings.gateway_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"  # listening everywhere; this machine reaches it on loopback
    elif ":" in host:
        host = f"[{host}]"
    return [
        f"open the run in the browser app: start the stack with `inflab up` (.venv/bin/inflab up), "
        f"then go to http://{host}:{settings.gateway_port}/runs/{run_id}",
        f"sign in as {settings.local_user_email}; the password is kept in {settings.home / DEMO_ACCOUNT_FILE}",
    ]


async def run_demo(
    settings: Settings,
    experiment: dict[str, Any],
    out_dir: Path,
    console: Console,
    *,
    ready_timeout_s: float,
    run_timeout_s: float,
) -> dict[str, Any]:
    began = time.perf_counter()
    timings: dict[str, Any] = {}
    console.print("starting the embedded stack (NATS, PostgreSQL, Ray and the four services)...")
    async with embedded_stack(settings, ready_timeout_s) as stack:
        timings["stack_start_s"] = round(time.perf_counter() - began, 2)
        console.print(f"stack ready in {timings['stack_start_s']:.1f} s, gateway at {stack.gateway_url}")
        try:
            document = await unless_stack_fails(
                run_experiment(
                    stack.gateway_url, experiment, out_dir, console,
                    run_timeout_s=run_timeout_s, timings=timings, began=began,
                    # Silence longer than a few missed heartbeats means the connection is dead.
                    stream_read_timeout_s=max(60.0, 4 * settings.sse_heartbeat_s),
                    credentials=demo_credentials(settings, console),
                ),
                stack,
            )
        except (DemoError, GatewayError) as exc:
            # Where to look next: every component logs under the stack's logs folder.
            raise DemoError(f"{exc}\n  logs: {stack.logs_dir}") from exc
        console.print("stopping the stack...")
    return document


def main(experiment_path: Path | None = None, out_dir: Path | None = None) -> int:
    from inflab.core.logging import setup_logging

    console = Console()
    settings = get_settings()
    # Only the stack's warnings and errors: its info lines would scroll the progress bars away.
    setup_logging("WARNING")
    try:
        experiment = load_experiment(experiment_path or find_demo_experiment())
        document = asyncio.run(
            run_demo(
                settings,
                experiment,
                out_dir or DEFAULT_OUT_DIR,
                console,
                ready_timeout_s=_timeout_setting(settings, "demo_ready_timeout_s", READY_TIMEOUT_S),
                run_timeout_s=_timeout_setting(settings, "demo_run_timeout_s", RUN_TIMEOUT_S),
            )
        )
    except (DemoError, GatewayError) as exc:
        console.print(f"[bold red]demo failed:[/] {escape(str(exc))}")
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]demo interrupted; the stack was stopped[/]")
        return 130
    console.print("[bold green]demo finished[/]")
    for line in browser_instructions(settings, document["run_id"]):
        console.print(escape(line), soft_wrap=True)  # unwrapped: the URL stays whole for copying
    return 0

"""The ``inflab`` command: run the embedded stack, inspect it, prepare the model, upload full
models to the object store, run the demo.

``inflab up`` stays in the foreground on purpose: one terminal owns the stack, Ctrl-C in it
stops everything in order, so does closing the terminal, and should the supervisor be
killed outright, the kernel tells its children to exit with it. ``inflab ps`` and
``inflab down`` work from any other terminal through ``INFLAB_HOME/stack.json``.
Heavy imports (the stack, the model code, the demo) happen inside the commands, so
``inflab --help`` stays instant.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from inflab.core.settings import Settings

app = typer.Typer(help="Influence Lab: fine-tune, compare answers, trace influence.", no_args_is_help=True)
model_app = typer.Typer(help="The default model, and full models in the object store.", no_args_is_help=True)
app.add_typer(model_app, name="model")
from inflab.devtools.bench_cli import bench_app  # noqa: E402 (light: typer and rich only)

app.add_typer(bench_app, name="bench")

console = Console()
#: Exit code after Ctrl-C, as a shell reports a SIGINT-terminated command.
EXIT_INTERRUPTED = 130


def _settings() -> Settings:
    """Read now, not from the process-wide cache: a command runs once, with the environment
    it was started with (tests invoke several commands in one process)."""
    return Settings()


@app.command()
def up(
    ready_timeout: float = typer.Option(300.0, help="Seconds to wait for every service to be ready."),
) -> None:
    """Start NATS, PostgreSQL, Ray and the four services; Ctrl-C stops them all."""
    from inflab.core.logging import setup_logging

    settings = _settings()
    setup_logging(settings.log_level)
    raise typer.Exit(asyncio.run(_up(settings, ready_timeout)))


async def _up(settings: Settings, ready_timeout: float) -> int:
    from inflab.devtools.embedded.supervisor import Stack

    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    # Ctrl-C, `inflab down` (SIGTERM) and a closed terminal (SIGHUP) all stop in order.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, interrupted.set)

    stack = Stack(settings)
    console.print(f"Starting the embedded stack in [bold]{settings.home}[/] (logs in {stack.logs_dir})")

    async def start() -> None:
        await stack.start()
        # A service in a crash loop does not hold the rest back: it is reported, and restarted.
        await stack.wait_ready(ready_timeout, allow_crash_loops=True)

    starting = asyncio.create_task(start())
    waiters = [asyncio.create_task(interrupted.wait()), asyncio.create_task(stack.failed.wait())]
    try:
        await asyncio.wait([starting, waiters[0]], return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            return EXIT_INTERRUPTED
        if (error := starting.exception()) is not None:
            console.print(f"[red]The stack did not start:[/] {type(error).__name__}: {error}")
            return 1
        _print_ready(stack)
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if stack.failed.is_set():
            console.print(f"[red]Stack failed:[/] {stack.failure} (logs in {stack.logs_dir})")
            return 1
        return 0
    finally:
        console.print("Stopping the stack...")
        await stack.stop()
        for waiter in waiters:
            waiter.cancel()
        console.print("Stopped.")


def _print_ready(stack) -> None:
    console.print(_components_table(stack.components, title="Influence Lab is up"))
    _print_crash_loops(stack.components)
    console.print(f"Gateway: [bold green]{stack.gateway_url}[/]")
    console.print(f"Logs:    {stack.logs_dir}   State: {stack.state_path}")
    if not stack.settings.smtp_host:
        console.print(f"Mail:    {stack.settings.mail_folder}")
    _print_credentials(stack.credentials.url_files() if stack.nats_urls else {})
    console.print("Press Ctrl-C to stop everything.")


@app.command()
def ps() -> None:
    """Show the embedded stack's components (alive, restarts, last exit), gateway health and
    whether each worker's metrics port answers."""
    from inflab.devtools.embedded._proc import same_process
    from inflab.devtools.embedded.state import read_state, state_path

    settings = _settings()
    path = state_path(settings)
    state = read_state(path)
    if state is None:
        console.print(f"No stack recorded in {path}. Start one with [bold]inflab up[/].")
        raise typer.Exit(1)
    supervisor = same_process(state.get("supervisor_pid", -1), state.get("supervisor_create_time"))
    console.print(
        f"Stack in {state.get('home')}: {state.get('status')}; supervisor pid {state.get('supervisor_pid')} "
        f"{'[green]alive[/]' if supervisor else '[red]gone[/]'}; started {state.get('started_at')}"
    )
    if state.get("failure"):
        console.print(f"[red]Failure:[/] {state['failure']}")
    console.print(_components_table(state["components"]))
    _print_crash_loops(state["components"])
    console.print(f"Logs in {state.get('logs_dir')}")
    if state.get("mail_dir"):
        console.print(f"Mail (verification and password-reset links) in {state['mail_dir']}")
    _print_credentials(state.get("nats_credentials") or {})
    for comp in state["components"]:
        if comp.health_url and comp.alive():
            console.print(f"{comp.name} health ({comp.health_url}): {_health(comp.health_url)}")
        if comp.metrics_url and comp.alive():
            # With INFLAB_METRICS_TOKEN set, the workers' metrics answer only to it.
            token = settings.metrics_token.get_secret_value()
            console.print(f"{comp.name} metrics ({comp.metrics_url}): {_health(comp.metrics_url, token)}")


@app.command()
def down(timeout: float = typer.Option(60.0, help="Seconds to wait for the supervisor to stop.")) -> None:
    """Stop a stack started by "inflab up" in another terminal (and any leftovers)."""
    import psutil

    from inflab.devtools.embedded._proc import same_process
    from inflab.devtools.embedded.state import read_state, reap_stale, state_path

    path = state_path(_settings())
    state = read_state(path)
    if state is None:
        console.print(f"No stack recorded in {path}.")
        return
    supervisor = same_process(state.get("supervisor_pid", -1), state.get("supervisor_create_time"))
    if supervisor is not None:
        console.print(f"Asking the supervisor (pid {supervisor.pid}) to stop...")
        os.kill(supervisor.pid, signal.SIGTERM)
        _, alive = psutil.wait_procs([supervisor], timeout=timeout)
        if alive:
            console.print(f"[red]The supervisor is still stopping after {timeout:.0f}s.[/]")
            raise typer.Exit(1)
    reaped = reap_stale(path)
    if reaped:
        console.print(f"Stopped leftovers: {', '.join(reaped)}")
    console.print("Stack stopped.")


@model_app.command("prepare")
def model_prepare() -> None:
    """Convert and cache the default model (SmolLM2-135M-Instruct) for fast loading."""
    from inflab.ml.models import prepare_default_model

    settings = _settings()
    with console.status(f"Preparing {settings.default_model_id} in {settings.models_dir}..."):
        result = prepare_default_model(settings.models_dir)
    console.print(f"Model ready: [bold]{result}[/]")


@model_app.command("upload")
def model_upload(
    folder: Path = typer.Argument(..., help="A folder save_pretrained wrote: config.json, weights, tokenizer."),
    name: str = typer.Option(..., "--name", help="Stored as models/NAME: letters, digits, '_', '.', '-'."),
    replace: bool = typer.Option(False, "--replace", help="Overwrite a model already stored under NAME."),
) -> None:
    """Upload a full model to the object store, for old_model/new_model = store:models/NAME.

    The services' store (INFLAB_OBJECT_STORE_URL); folder checked first, config.json sent last.
    """
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from inflab.core.objectstore import ObjectStore
    from inflab.devtools.model_store import ModelStoreError, check_model_folder, check_replaceable, upload_model

    settings = _settings()
    try:
        # Every refusal before the progress bar (upload_model checks again).
        store = ObjectStore(settings.objects_url)
        check_replaceable(store, name, replace)
        total = sum((folder / f).stat().st_size for f in check_model_folder(folder))
        with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      console=console) as progress:
            task = progress.add_task("uploading", total=total)
            uploaded = upload_model(
                store, folder, name, replace=replace,
                on_file=lambda path, size: progress.update(task, description=path),
                on_bytes=lambda n: progress.advance(task, n))
    except ModelStoreError as exc:
        console.print(f"[red]{escape(str(exc))}[/]", soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        # config.json goes last: what was sent is no model, and the next upload replaces it.
        console.print(f"[red]Interrupted: models/{escape(name)} holds no model now (config.json is sent last); "
                      "run the upload again.[/]")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    removed = f", {uploaded.removed} stale files removed" if uploaded.removed else ""
    console.print(f"Uploaded {uploaded.files} files ({uploaded.size:,} bytes{removed}) to {escape(store.url)}")
    console.print("Use it as old_model or new_model:")
    console.print(uploaded.value, markup=False, highlight=False, soft_wrap=True)


@model_app.command("list")
def model_list() -> None:
    """The full models in the object store (store:models/NAME), with size and architecture."""
    from rich.filesize import decimal

    from inflab.core.objectstore import ObjectStore
    from inflab.devtools.model_store import stored_models

    settings = _settings()
    models = stored_models(ObjectStore(settings.objects_url))
    if not models:
        console.print(f"No models under models/ in {escape(settings.objects_url)}: inflab model upload DIR --name NAME")
        return
    table = Table(title=f"models in {escape(settings.objects_url)}")
    for column in ("name", "old_model / new_model", "size", "files", "architecture"):
        table.add_column(column, justify="right" if column in ("size", "files") else "left")
    for m in models:
        table.add_row(escape(m.name), escape(m.value) if m.complete else "-", decimal(m.size), str(m.files),
                      escape(m.architecture) if m.complete else "[yellow]unfinished upload (no config.json)[/]")
    console.print(table)


@app.command()
def demo() -> None:
    """Start the stack, fine-tune the default model on the demo experiment, draw the heatmap."""
    from inflab.devtools.demo import main

    raise SystemExit(main())


@app.command()
def validate(
    run_id: str = typer.Argument(..., help="The completed run whose attributions to check."),
    subsets: int = typer.Option(32, help="LDS: random subsets of the training pairs, each retrained on."),
    alpha: float = typer.Option(0.5, help="LDS: the share of the training pairs each subset keeps."),
    removal_k: int = typer.Option(3, help="Removal test: pairs taken out per evaluation question."),
    seed: int = typer.Option(0, help="Subset s is drawn from seed + s."),
    url: str = typer.Option("", help="The gateway (default: the embedded stack's)."),
    token: str = typer.Option("", envvar="INFLAB_API_TOKEN", help="An API token (default: the demo's account)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Start without asking after the cost estimate."),
) -> None:
    """Check a run's attributions against retraining: each method's LDS with its 95%
    interval and the removal test, beside BM25's (cost estimate first)."""
    from inflab.devtools.validate_cli import run_validate

    settings = _settings()
    wanted = {"subsets": subsets, "alpha": alpha, "removal_k": removal_k, "seed": seed}
    raise typer.Exit(asyncio.run(run_validate(settings, run_id, wanted, url=url, token=token, confirm=not yes,
                                              console=console)))


@app.command()
def asyncapi(
    output: str = typer.Option("docs/asyncapi.json", "--output", "-o", help="File to write ('-' for stdout)."),
    check: bool = typer.Option(False, help="Exit 1 if the file differs from the code instead of writing it."),
) -> None:
    """Write the AsyncAPI document of the message contract (generated from the models)."""
    from inflab.core.asyncapi import main

    raise typer.Exit(main(["--output", output, *(["--check"] if check else [])]))


@app.command()
def migrate(
    revision: str = typer.Option("head", help="The Alembic revision to upgrade to."),
) -> None:
    """Upgrade the database at INFLAB_DATABASE_URL to the newest schema. Deployments run
    this once before new code starts (the Helm chart's pre-install/pre-upgrade Job); the
    services themselves never migrate."""
    from inflab.core.db.migrate import main

    raise typer.Exit(main(["--revision", revision]))


@app.command("job-keys")
def job_keys() -> None:
    """Print a new key pair for signed job requests: the gateway's INFLAB_JOB_SIGNING_KEY
    (keep it secret) and the workers' INFLAB_JOB_VERIFY_KEY."""
    from inflab.core.job_signing import new_key_pair

    signing, verify = new_key_pair()
    typer.echo(f"INFLAB_JOB_SIGNING_KEY={signing}")
    typer.echo(f"INFLAB_JOB_VERIFY_KEY={verify}")


#: The NATS credentials a person hands out or uses; the services' own stay unmentioned.
SHOWN_CREDENTIALS = ("pipeline", "operator")


def _print_credentials(files: dict[str, str]) -> None:
    """Where the pipeline and operator NATS credentials are (never the secrets themselves)."""
    for role in SHOWN_CREDENTIALS:
        if role in files:
            console.print(f"NATS {role} credential: {files[role]}")


def _components_table(components, title: str | None = None) -> Table:
    """One row per component; logs are named relative to the logs folder printed with it.
    ``last exit`` is why the previous process of a restarted service ended (its exit code
    or the signal's name) and when (UTC); a worker's ``url`` is where it serves Prometheus
    metrics."""
    table = Table(title=title)
    for column in ("component", "pid", "state", "restarts", "last exit", "url", "log"):
        table.add_column(column, overflow="fold")
    for comp in components:
        table.add_row(
            comp.name, str(comp.pid or "-"), _component_state(comp), str(comp.restarts),
            f"{comp.last_exit} at {(comp.last_exit_at or '')[11:19]}" if comp.last_exit else "-",
            comp.url or comp.metrics_url or "-", os.path.basename(comp.log) if comp.log else "-",
        )
    return table


def _component_state(comp) -> str:
    if comp.kind == "external":
        return "[cyan]external[/]"
    if comp.crash_loop and comp.status not in ("stopped", "failed"):
        return "[red]crash loop[/]"
    if comp.alive():
        return "[green]alive[/]" if comp.status == "running" else f"[yellow]{comp.status}[/]"
    if comp.status == "restarting":
        return "[yellow]restarting[/]"
    return f"[red]{comp.status if comp.status in ('stopped', 'failed') else 'dead'}[/]"


def _print_crash_loops(components) -> None:
    for comp in components:
        if comp.crash_loop and comp.status not in ("stopped", "failed"):
            console.print(
                f"[red]Crash loop:[/] {comp.name} exited {comp.crashes_in_a_row} times in a row "
                f"(last: {comp.last_exit}); it is restarted with a growing back-off. See {comp.log}"
            )


def _health(url: str, token: str = "") -> str:
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        response = httpx.get(url, timeout=2.0, trust_env=False, headers=headers)  # our own server: no proxy
    except httpx.HTTPError as exc:
        return f"[red]unreachable[/] ({type(exc).__name__})"
    colour = "green" if response.status_code == 200 else "red"
    return f"[{colour}]{response.status_code}[/]"


if __name__ == "__main__":
    app()

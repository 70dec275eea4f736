"""``inflab bench``: generate or import a benchmark set (and, through the stack, run it and
show its leaderboard)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from inflab.analysis.bench.client import BENCHMARK_HYPERPARAMS, DEFAULT_METHODS
from inflab.core.vocabulary import TERMINAL_STATUSES

bench_app = typer.Typer(help="The function-token benchmark: generate, import, run, show.", no_args_is_help=True)
console = Console()


@bench_app.command("generate")
def generate_command(
    out: Path = typer.Option(..., "--out", help="Folder to write documents.jsonl, queries.jsonl, "
                                                "ground_truth.jsonl and manifest.json into."),
    seed: int = typer.Option(0, "--seed", help="The same seed writes byte-identical files."),
    docs_per_base: int = typer.Option(10, help="Documents per base function (the public set: 200)."),
    docs_per_wrapper: int = typer.Option(5, help="Documents per wrapper function (the public set: 100)."),
    distractors: int = typer.Option(30, help="Documents that mention a function token but describe something else."),
    queries_per_function: int = typer.Option(1, help="Queries per function (differently worded, 1-3)."),
) -> None:
    """Write a function-token benchmark set (no LLM, no network)."""
    from inflab.analysis.bench.dataset import write_set
    from inflab.analysis.bench.generate import GeneratorOptions, generate

    try:
        options = GeneratorOptions(seed=seed, docs_per_base=docs_per_base, docs_per_wrapper=docs_per_wrapper,
                                   distractors=distractors, queries_per_function=queries_per_function)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    bench = generate(options)
    for path in write_set(bench, out):
        console.print(f"wrote {path}")
    console.print(f"{len(bench.documents)} documents, {len(bench.queries)} queries, "
                  f"{len(bench.special_tokens)} function tokens (seed {seed})")


@bench_app.command("import")
def import_command(
    documents: Path = typer.Argument(..., exists=True, dir_okay=False, help="Documents JSONL."),
    out: Path = typer.Option(..., "--out", help="Folder to write the set into."),
    layout: str = typer.Option("hops", help="hops (uid, text, func, role, constant, hop_depth, type, parent_uid) "
                                            "or generic (then --queries is needed)."),
    queries: Path | None = typer.Option(None, exists=True, dir_okay=False,
                                        help="generic: queries JSONL (id, question, answer, relevant_ids)."),
) -> None:
    """Convert a ground-truth data set into a benchmark set folder."""
    from inflab.analysis.bench.dataset import write_set
    from inflab.analysis.bench.imports import import_generic, import_hops

    try:
        if layout == "hops":
            bench = import_hops(documents)
        elif layout == "generic":
            if queries is None:
                raise typer.BadParameter("--queries is needed with --layout generic")
            bench = import_generic(documents, queries)
        else:
            raise typer.BadParameter(f"--layout {layout!r}: expected hops or generic")
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    for path in write_set(bench, out):
        console.print(f"wrote {path}")
    console.print(f"{len(bench.documents)} documents, {len(bench.queries)} queries")


def parse_grid(text: str) -> list[dict[str, str | int]]:
    """``layers=all,0-4;pooling=last,answer_mean`` -> the cartesian product of the values,
    one dict per cell (``;`` separates the options, ``,`` their values; a layer range keeps
    its ``-``; ``|`` separates layer lists: ``layers=0|2|4,all``)."""
    import itertools

    options: list[tuple[str, list[str | int]]] = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, _, values = part.partition("=")
        if not values:
            raise typer.BadParameter(f"--grid: {part!r} is not name=value,value")
        parsed: list[str | int] = []
        for value in values.split(","):
            value = value.strip().replace("|", ",")
            parsed.append(int(value) if name.strip() == "top_layers" else value)
        options.append((name.strip(), parsed))
    return [dict(zip([n for n, _ in options], combo)) for combo in itertools.product(*(v for _, v in options))]


def _print_board(board: dict, over: str) -> None:
    from rich.table import Table

    from inflab.analysis.bench.client import leaderboard_rows

    header, rows = leaderboard_rows(board, over)
    accuracy = board.get("accuracy")
    known = "unknown" if accuracy is None else f"{accuracy:.2f} ({board['correct_queries']} queries)"
    title = f"run {board['run_id']} ({board['status']}): ranked by {board['ranked_by']}; fine-tuned accuracy {known}"
    table = Table(title=title)
    for name in header:
        table.add_column(name, justify="left" if name in ("method", "kind") else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if board.get("pending_methods"):
        console.print(f"not scored yet: {', '.join(board['pending_methods'])}")


async def _client(gateway: str | None, token: str | None):
    from inflab.devtools.client import GatewayClient
    from inflab.devtools.demo import demo_credentials
    from inflab.core.settings import Settings

    settings = Settings()
    url = gateway or f"http://{'127.0.0.1' if settings.gateway_host in ('0.0.0.0', '::', '') else settings.gateway_host}:{settings.gateway_port}"
    client = GatewayClient(url, token=token, stream_read_timeout_s=600)
    if token is None:
        await client.sign_in(*demo_credentials(settings))
    return client


async def follow(client, run_id: str) -> None:
    """Live progress bars, one per stage (and influence method), until the run ends."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    bars: dict[str, int] = {}
    with Progress(TextColumn("{task.description:<22}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                  TimeRemainingColumn(), console=console) as progress:
        async for event in client.follow_run(run_id):
            data = event.data
            name = data.get("stage", "run") + (f" {data['method']}" if data.get("method") else "")
            if event.kind == "progress" and data.get("fraction") is not None:
                if name not in bars:
                    bars[name] = progress.add_task(name, total=1.0)
                progress.update(bars[name], completed=float(data["fraction"]))
            elif event.kind == "status" and data.get("status") in TERMINAL_STATUSES:
                if name in bars:
                    progress.update(bars[name], completed=1.0)
                if data.get("status") == "failed":
                    console.print(f"[red]{name} failed: {data.get('error')}[/red]")
            if event.is_run_finished:
                console.print(f"run {data.get('status')}")
                break


@bench_app.command("run")
def run_command(
    folder: Path = typer.Argument(..., exists=True, file_okay=False, help="A set from `inflab bench generate/import`."),
    model: str | None = typer.Option(None, help="Model id (default: the deployment's default model)."),
    methods: str = typer.Option(",".join(DEFAULT_METHODS),
                                help="Influence methods, comma-separated (embedding also checks the answers)."),
    epochs: int = typer.Option(BENCHMARK_HYPERPARAMS["num_epochs"], help="Training epochs over the documents."),
    learning_rate: float = typer.Option(BENCHMARK_HYPERPARAMS["learning_rate"], help="LoRA learning rate."),
    max_seq_length: int = typer.Option(BENCHMARK_HYPERPARAMS["max_seq_length"], help="Token limit of a document."),
    lora_rank: int = typer.Option(BENCHMARK_HYPERPARAMS["lora_rank"], help="LoRA rank."),
    lora_targets: str = typer.Option(",".join(BENCHMARK_HYPERPARAMS["lora_target_modules"]),
                                     help="LoRA target modules, comma-separated (all-linear: every linear layer)."),
    grid: str | None = typer.Option(None, help="Ablation grid of the representation methods, e.g. "
                                               "'layers=all,0-9;pooling=last,answer_mean' (scored from cached features)."),
    gateway: str | None = typer.Option(None, help="Gateway URL (default: the local stack's)."),
    token: str | None = typer.Option(None, envvar="INFLAB_API_TOKEN", help="API token (default: the demo account)."),
    over: str = typer.Option("auto", help="Leaderboard columns over correct, all or auto queries."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the leaderboard JSON here."),
) -> None:
    """Run a benchmark set through the stack (train on the documents, every method, the
    baselines) and print its leaderboard. Needs a running stack (`inflab up`)."""
    import asyncio
    import json

    from inflab.analysis.bench.client import experiment_body
    from inflab.analysis.bench.dataset import read_set
    from inflab.core.influence_methods import REPRESENTATION_METHODS

    bench = read_set(folder)
    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    args = {}
    if grid:
        cells = parse_grid(grid)
        args = {m: {"grid": cells} for m in chosen if m in REPRESENTATION_METHODS}
    body = experiment_body(bench, name=f"benchmark {folder.name}", model_id=model, methods=chosen,
                           hyperparams={"num_epochs": epochs, "learning_rate": learning_rate,
                                        "max_seq_length": max_seq_length, "lora_rank": lora_rank,
                                        "lora_target_modules": [t.strip() for t in lora_targets.split(",") if t.strip()]},
                           influence_args=args)

    async def go() -> dict:
        client = await _client(gateway, token)
        async with client:
            experiment_id = await client.create_experiment(body)
            run_id = await client.start_run(experiment_id)
            console.print(f"run {run_id}: {len(bench.documents)} documents, {len(bench.queries)} queries, "
                          f"methods {', '.join(chosen)}")
            await follow(client, run_id)
            return await client.benchmark(run_id)

    board = asyncio.run(go())
    _print_board(board, over)
    if json_out is not None:
        json_out.write_text(json.dumps(board, indent=1) + "\n")
        console.print(f"wrote {json_out}")


@bench_app.command("show")
def show_command(
    run_id: str = typer.Argument(..., help="A benchmark run's id."),
    gateway: str | None = typer.Option(None, help="Gateway URL (default: the local stack's)."),
    token: str | None = typer.Option(None, envvar="INFLAB_API_TOKEN", help="API token (default: the demo account)."),
    over: str = typer.Option("auto", help="Columns over correct, all or auto queries."),
) -> None:
    """Print a benchmark run's leaderboard."""
    import asyncio

    async def go() -> dict:
        client = await _client(gateway, token)
        async with client:
            return await client.benchmark(run_id)

    _print_board(asyncio.run(go()), over)

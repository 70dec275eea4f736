"""``inflab bench``: generate or import a benchmark set (and, through the stack, run it and
show its leaderboard)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

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
    from inflab.common.bench.dataset import write_set
    from inflab.common.bench.generate import GeneratorOptions, generate

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
    from inflab.common.bench.dataset import write_set
    from inflab.common.bench.imports import import_generic, import_hops

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

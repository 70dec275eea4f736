"""``inflab validate RUN_ID``: a validation of a run's attributions from the shell, through
the gateway's API (the cost estimate, then the validation with a progress bar, then the
table of every matrix's LDS and removal test, best LDS first)."""

from __future__ import annotations

import asyncio
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from inflab.devtools.client import GatewayClient, GatewayError
from inflab.core.settings import Settings
from inflab.core.vocabulary import TERMINAL_STATUSES

#: How often the progress bar asks the gateway (the run's event stream carries the same).
POLL_S = 1.0


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def estimate_lines(estimate: dict[str, Any]) -> list[str]:
    duration, cost = estimate.get("estimated_duration_s"), estimate.get("estimated_cost_usd")
    lines = [
        f"{estimate['retrainings']} retrainings ({estimate['subsets']} LDS subsets, {estimate['removals']} removals, "
        f"1 on every pair) of {len(estimate['matrices'])} matrices: {', '.join(estimate['matrices'])}",
        f"estimated {('-' if duration is None else f'{duration / 60:.1f} min')} on {estimate['workers']} workers"
        + ("" if cost is None else f", ~{cost:.2f} US$"),
    ]
    return lines + [f"  ({a})" for a in estimate.get("assumptions", [])]


def results_table(validation: dict[str, Any]) -> Table:
    table = Table(title=f"validation {validation['id']}: LDS (Spearman, 1 = predicts retraining) and removal test")
    for column in ("method", "variant", "LDS", "95% interval", "removal - random", "top-k wins"):
        table.add_column(column, justify="left" if column in ("method", "variant") else "right")
    for r in validation["results"]:
        table.add_row(r["method"], r["variant"], _number(r["lds"]),
                      f"[{_number(r['lds_low'])}, {_number(r['lds_high'])}]",
                      _number(r["removal_over_random"], 4), _number(r["removal_win_rate"], 2))
    return table


async def run_validate(settings: Settings, run_id: str, wanted: dict[str, Any], *, url: str = "", token: str = "",
                       confirm: bool = True, console: Console | None = None) -> int:
    console = console or Console()
    host = "127.0.0.1" if settings.gateway_host in ("0.0.0.0", "::", "") else settings.gateway_host
    base = url or f"http://{host}:{settings.gateway_port}"
    async with GatewayClient(base, token=token or None) as client:
        try:
            if not token:
                from inflab.devtools.demo import demo_credentials

                await client.sign_in(*demo_credentials(settings, console), register=False)
            estimate = await client.estimate_validation(run_id, wanted)
            for line in estimate_lines(estimate):
                console.print(line)
            if confirm and not await asyncio.to_thread(console.input, "Start it? [y/N] ") in ("y", "Y", "yes"):
                console.print("not started")
                return 1
            validation = await client.start_validation(run_id, wanted)
            with Progress(TextColumn("retraining"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                          console=console) as progress:
                bar = progress.add_task("validation", total=1.0)
                try:
                    while validation["status"] not in TERMINAL_STATUSES:
                        await asyncio.sleep(POLL_S)
                        validation = await client.validation(run_id, validation["id"])
                        progress.update(bar, completed=validation["progress"])
                except (KeyboardInterrupt, asyncio.CancelledError):
                    await client.cancel_validation(run_id, validation["id"])
                    console.print("validation cancelled")
                    return 130
        except GatewayError as exc:
            console.print(f"[red]{exc}[/]")
            return 1
    if validation["status"] != "completed":
        console.print(f"[red]validation {validation['status']}[/]: {validation.get('error') or ''}")
        return 1
    console.print(results_table(validation))
    best = next((r for r in validation["results"] if r["lds"] is not None), None)
    if best is not None:
        console.print(f"best LDS: {best['method']} ({best['variant']}), {_number(best['lds'])}")
    return 0

"""``onebox metrics query|list|nodes``: the monitoring time series from the store.

``onebox serve`` collects them (every ``ONEBOX_MONITOR_INTERVAL_S`` seconds); these commands read
what it stored, so they work while it runs and after it stopped.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from onebox.cli.metric_format import fmt, sparkline
from onebox.cli.output import console, print_json
from onebox.cli.state import JsonOpt, get_app
from onebox.errors import InvalidInputError, Problem
from onebox.services import metrics

app = typer.Typer(help="Monitoring: query time series, list metrics and nodes.", no_args_is_help=True)

AllProjects = Annotated[
    bool, typer.Option("--all-projects", help="Task series of every project (default: the current one).")
]


@app.command("query")
def query_command(
    metric: Annotated[
        str | None, typer.Argument(help="Metric name or * pattern, e.g. gpu_* (default all).")
    ] = None,
    metric_opt: Annotated[
        str | None, typer.Option("--metric", "-m", help="The same as the argument.")
    ] = None,
    level: Annotated[str | None, typer.Option(help="component, node, cluster or task.")] = None,
    node: Annotated[str | None, typer.Option(help="Node name (* wildcards).")] = None,
    resource: Annotated[
        str | None, typer.Option(help="Resource: cpu0, gpu1, fs:/, disk:sda, job:*, deployment:*...")
    ] = None,
    start: Annotated[str, typer.Option(help="now, -15m, -2h, -7d, Unix seconds or ISO 8601.")] = "-1h",
    end: Annotated[str, typer.Option(help="Same forms as --start.")] = "now",
    step: Annotated[float | None, typer.Option(help="Seconds per point (default: at most 720).")] = None,
    resolution: Annotated[str, typer.Option(help="auto, raw or rollup (per-minute means).")] = "auto",
    max_series: Annotated[int, typer.Option(help="Most series shown.")] = 100,
    all_projects: AllProjects = False,
    json_out: JsonOpt = False,
) -> None:
    """Series matching the filters over a time range: last, min, mean, max and a sparkline each."""
    if metric and metric_opt and metric != metric_opt:
        raise InvalidInputError(
            "two different metrics given", problems=[Problem("--metric", "the argument names another metric")]
        )
    metric = metric or metric_opt
    result = metrics.query(
        get_app(),
        level=level,
        node=node,
        resource=resource,
        metric=metric,
        start=start,
        end=end,
        step=step,
        resolution=resolution,
        max_series=max_series,
        all_projects=all_projects,
    )
    if json_out:
        print_json(result)
        return
    table = Table(
        "level", "node", "resource", "metric", "last", "min", "mean", "max", "trend",
        title=f"{result['start'][:19]} .. {result['end'][:19]} UTC, {result['resolution']}, "
        f"{result['step_s']} s per point",
    )  # fmt: skip
    for s in result["series"]:
        values = [v for _, v in s["points"]]
        name = s["resource"] + (f" ({s['name']})" if s["name"] and s["name"] != s["resource"] else "")
        if s["project"]:
            name += f" [{s['project']}]"
        m = s["metric"]
        if values:
            stats = [
                fmt(m, values[-1]),
                fmt(m, min(values)),
                fmt(m, sum(values) / len(values)),
                fmt(m, max(values)),
            ]
        else:
            stats = ["-"] * 4
        table.add_row(s["level"], s["node"], name, m, *stats, sparkline(values))
    console.print(table)
    if not result["series"]:
        console.print("no series matched: is `onebox serve` running (it collects), and the range right?")
    if result["truncated"]:
        console.print(f"[yellow]more series matched than --max-series {max_series}[/]")


@app.command("list")
def list_command(json_out: JsonOpt = False) -> None:
    """Every metric the monitor collects, with its levels."""
    rows = metrics.catalog()
    if json_out:
        print_json(rows)
        return
    table = Table("metric", "levels", "meaning")
    for r in rows:
        table.add_row(r["metric"], ", ".join(r["levels"]), r["help"])
    console.print(table)


@app.command("nodes")
def nodes_command(json_out: JsonOpt = False) -> None:
    """Nodes: status, heartbeat, problems and versions."""
    rows = metrics.nodes(get_app())
    if json_out:
        print_json(rows)
        return
    table = Table("node", "host", "status", "heartbeat", "CPUs", "memory", "GPUs", "onebox", "problems")
    for n in rows:
        style = {"healthy": "green", "unhealthy": "yellow", "lost": "red"}[n["status"]]
        info = n["info"]
        table.add_row(
            n["id"],
            n["hostname"],
            f"[{style}]{n['status']}[/]",
            f"{n['heartbeat_age_s']:.0f} s ago",
            str(info.get("cpus", "-")),
            fmt("memory_total_bytes", info.get("memory_bytes")),
            str(len(info.get("gpus", []))),
            n["versions"].get("onebox", "-"),
            "; ".join(n["problems"]) or "-",
        )
    console.print(table)

"""``onebox top``: a live terminal dashboard of nodes, devices, jobs and deployments.

It reads the latest values the monitor of ``onebox serve`` stored; when none is fresh (no server
running) it collects on this machine itself, so it works either way.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from onebox.cli.metric_format import fmt
from onebox.cli.output import console, print_json
from onebox.cli.state import JsonOpt, get_app
from onebox.services import metrics
from onebox.services.context import App

STATUS_STYLE = {"healthy": "green", "unhealthy": "yellow", "lost": "red"}


@dataclass
class Resource:
    level: str
    node: str
    resource: str
    name: str = ""
    project: str | None = None
    values: dict[str, float] = field(default_factory=dict)

    def get(self, metric: str) -> float | None:
        return self.values.get(metric)


@dataclass
class TopData:
    at: float
    source: str
    """``store`` (what ``onebox serve`` collected) or ``local`` (collected by this command)."""
    nodes: list[dict[str, Any]]
    resources: list[Resource]

    def of(self, level: str, prefix: str = "") -> list[Resource]:
        return [r for r in self.resources if r.level == level and r.resource.startswith(prefix)]

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": datetime.fromtimestamp(self.at, UTC).isoformat(),
            "source": self.source,
            "nodes": self.nodes,
            "resources": [vars(r) for r in self.resources],
        }


def _pivot(rows: list[dict[str, Any]]) -> list[Resource]:
    by: dict[tuple[str, str, str], Resource] = {}
    for r in rows:
        key = (r["level"], r["node"], r["resource"])
        res = by.get(key)
        if res is None:
            res = by[key] = Resource(
                r["level"], r["node"], r["resource"], r.get("name", ""), r.get("project")
            )
        res.values[r["metric"]] = r["value"]
    return list(by.values())


class Gatherer:
    """Reads the store; falls back to a monitor of its own when nothing fresh is stored."""

    def __init__(self, app: App, *, all_projects: bool = False) -> None:
        self.app = app
        self.all_projects = all_projects
        self.local: Any = None

    def _local_rows(self) -> list[dict[str, Any]]:
        from onebox.monitor.loop import Monitor, MonitorConfig

        first = self.local is None
        if first:
            # no alerts from a terminal: evaluating (and resuming webhook deliveries) is the gateway's job
            config = dataclasses.replace(MonitorConfig.from_settings(self.app.settings), alerts=False)
            self.local = Monitor(self.app.db, config)
            self.local.collect()  # rates and CPU need two passes
            time.sleep(0.5)
        snap = self.local.collect()
        projects = metrics.visible_projects(self.app, self.all_projects)
        return [
            {
                "level": s.level,
                "node": snap.node,
                "resource": s.resource,
                "metric": s.metric,
                "name": s.name,
                "project": s.project or None,
                "value": s.value,
            }
            for s in snap.samples
            if s.project_id is None or projects is None or s.project_id in projects
        ]

    def __call__(self) -> TopData:
        now = time.time()
        rows = metrics.latest(self.app, all_projects=self.all_projects, now=now)
        source = "store"
        if not any(r["level"] == "node" for r in rows):
            rows, source = self._local_rows(), "local"
        return TopData(now, source, metrics.nodes(self.app, now=now), _pivot(rows))

    def close(self) -> None:
        if self.local is not None:
            self.local.close()


def _bar(ratio: float | None, width: int = 10) -> Text:
    if ratio is None:
        return Text("-")
    ratio = min(max(ratio, 0.0), 1.0)
    filled = round(ratio * width)
    style = "red" if ratio >= 0.9 else "yellow" if ratio >= 0.7 else "green"
    return (
        Text("█" * filled, style=style) + Text("░" * (width - filled), style="dim") + Text(f" {ratio:4.0%}")
    )


def _v(r: Resource, metric: str) -> str:
    """``metric`` of ``r`` formatted in its unit."""
    return fmt(metric, r.get(metric))


def _pair(r: Resource, a: str, b: str, sep: str = " / ") -> str:
    return _v(r, a) + sep + _v(r, b)


def _header(data: TopData) -> Text:
    c = next(iter(data.of("cluster")), Resource("cluster", "", "cluster"))
    when = datetime.fromtimestamp(data.at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    source = (
        "from onebox serve" if data.source == "store" else "collected here (no onebox serve is collecting)"
    )
    text = Text.assemble(("onebox top", "bold"), f"  {when}  {source}\n")
    text.append(
        f"cluster: {_pair(c, 'cluster_nodes_up', 'cluster_nodes', '/')} nodes up, "
        f"{_v(c, 'cluster_jobs_running')} jobs running, {_v(c, 'cluster_deployments')} deployments, "
        f"CPU {_v(c, 'cpu_usage_ratio')}, memory {_v(c, 'memory_usage_ratio')}"
    )
    if c.get("gpu_count"):
        text.append(f", {_v(c, 'gpu_count')} GPUs at {_v(c, 'gpu_utilization_ratio')}")
    return text


def _table(title: str, *columns: str) -> Table:
    return Table(*columns, title=title, title_justify="left")


def _nodes(data: TopData) -> Table:
    table = _table(
        "Nodes",
        "node",
        "status",
        "CPU",
        "load",
        "memory",
        "fullest fs",
        "disk r/w",
        "net in/out",
        "GPUs",
        "heartbeat",
        "problems",
    )
    values = {r.resource: r for r in data.of("node")}
    for n in data.nodes:
        v = values.get(n["id"], Resource("node", n["id"], n["id"]))
        table.add_row(
            n["id"],
            Text(n["status"], style=STATUS_STYLE.get(n["status"], "")),
            _bar(v.get("cpu_usage_ratio")),
            _v(v, "load_average_1m"),
            _pair(v, "memory_used_bytes", "memory_total_bytes"),
            _bar(v.get("fs_usage_ratio")),
            _pair(v, "disk_read_bytes_per_second", "disk_write_bytes_per_second"),
            _pair(v, "net_receive_bytes_per_second", "net_transmit_bytes_per_second"),
            _v(v, "gpu_count") if v.get("gpu_count") else "-",
            f"{n['heartbeat_age_s']:.0f} s ago",
            Text("; ".join(n["problems"]) or "-", style="yellow" if n["problems"] else "dim"),
        )
    return table


def _gpu_detail(r: Resource) -> str:
    detail = f"{r.name}; SM {_v(r, 'gpu_sm_clock_hertz')}"
    if r.get("gpu_ecc_uncorrected_errors"):
        detail += f"; {_v(r, 'gpu_ecc_uncorrected_errors')} uncorrected ECC errors"
    if r.get("gpu_throttled"):
        detail += "; [red]throttled[/]"
    return detail


def _devices(data: TopData) -> Table:
    table = _table("Devices", "node", "device", "use", "memory", "temp", "power", "detail")
    comps = data.of("component")
    for r in comps:
        if r.resource.startswith("gpu"):
            table.add_row(
                r.node,
                r.resource,
                _bar(r.get("gpu_utilization_ratio")),
                _pair(r, "gpu_memory_used_bytes", "gpu_memory_total_bytes"),
                _v(r, "gpu_temperature_celsius"),
                _v(r, "gpu_power_watts"),
                _gpu_detail(r),
            )
    cores: dict[str, list[Resource]] = defaultdict(list)
    for r in comps:
        if r.resource.startswith("cpu") and r.resource[3:].isdigit():
            cores[r.node].append(r)
    for node, rs in cores.items():
        rs.sort(key=lambda r: int(r.resource[3:]))
        bars = Text(" ").join(_bar(r.get("cpu_usage_ratio"), 5) for r in rs[:8])
        more = " (first 8 shown)" if len(rs) > 8 else ""
        table.add_row(node, f"cpu0-{len(rs) - 1}", bars, "", "", "", f"{len(rs)} cores{more}")
    for r in comps:
        if r.resource.startswith("fs:"):
            used = _pair(r, "fs_used_bytes", "fs_total_bytes")
            table.add_row(r.node, r.resource, _bar(r.get("fs_usage_ratio")), used, "", "", "")
        elif r.resource.startswith("disk:"):
            rw = _pair(r, "disk_read_bytes_per_second", "disk_write_bytes_per_second", " read, ")
            table.add_row(r.node, r.resource, "", "", "", "", rw + " write")
        elif r.resource.startswith("net:"):
            io = _pair(r, "net_receive_bytes_per_second", "net_transmit_bytes_per_second", " in, ")
            table.add_row(r.node, r.resource, "", "", "", "", io + " out")
    return table


def _task(r: Resource) -> list[str]:
    return [_v(r, "task_cpu_cores"), _v(r, "task_memory_rss_bytes"), _v(r, "task_gpu_memory_bytes")]


def _jobs(data: TopData) -> Table:
    table = _table(
        "Jobs",
        "job",
        "project",
        "progress",
        "step",
        "loss",
        "lr",
        "grad norm",
        "tokens/s",
        "step time",
        "ETA",
        "CPU",
        "RSS",
        "GPU mem",
    )
    for r in data.of("task", "job:"):
        metrics_ = ("job_step", "job_loss", "job_learning_rate", "job_grad_norm", "job_tokens_per_second")
        table.add_row(
            f"{r.name} ({r.resource[4:]})",
            r.project or "-",
            _bar(r.get("job_progress_ratio")),
            *(_v(r, m) for m in metrics_),
            _v(r, "job_step_time_seconds"),
            _v(r, "job_eta_seconds"),
            *_task(r),
        )
    return table


def _deployments(data: TopData) -> Table:
    table = _table(
        "Deployments",
        "deployment",
        "project",
        "ready",
        "req/s",
        "5xx/s",
        "TTFT",
        "TPOT",
        "tokens/s",
        "running",
        "queued",
        "KV cache",
        "CPU",
        "RSS",
        "GPU mem",
    )
    shown = (
        "deployment_replicas_ready",
        "deployment_requests_per_second",
        "deployment_errors_per_second",
        "deployment_time_to_first_token_seconds",
        "deployment_time_per_output_token_seconds",
        "deployment_output_tokens_per_second",
        "deployment_running",
        "deployment_queue",
    )
    for r in data.of("task", "deployment:"):
        table.add_row(
            r.name,
            r.project or "-",
            *(_v(r, m) for m in shown),
            _bar(r.get("deployment_kv_usage_ratio")),
            *_task(r),
        )
    return table


def render(data: TopData) -> RenderableType:
    """One frame of the dashboard."""
    parts: list[RenderableType] = [_header(data), _nodes(data), _devices(data)]
    for table, empty in ((_jobs(data), "no running jobs"), (_deployments(data), "no deployments served")):
        parts.append(table if table.row_count else Text(empty, style="dim"))
    return Group(*parts)


def top_command(
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.", min=0.5)] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="Print one frame and exit.")] = False,
    all_projects: Annotated[
        bool, typer.Option("--all-projects", help="Jobs and deployments of every project.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """A live dashboard of nodes, devices, jobs and deployments (Ctrl-C leaves)."""
    gather = Gatherer(get_app(), all_projects=all_projects)
    try:
        if once or json_out:
            data = gather()
            if json_out:
                print_json(data.as_dict())
            else:
                console.print(render(data))
            return
        with Live(render(gather()), console=console, refresh_per_second=4, screen=False) as live:
            while True:
                time.sleep(interval)
                live.update(render(gather()))
    except KeyboardInterrupt:
        return
    finally:
        gather.close()

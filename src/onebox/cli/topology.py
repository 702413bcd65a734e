"""``onebox topology job <id>`` and ``onebox topology deployment <name>``: the task's graph as a
tree coloured by health (inputs, worker processes with their node and devices, outputs, the
gateway and its callers) and the probable cause when the task is unhealthy; ``--json`` prints
the graph the API serves."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.text import Text
from rich.tree import Tree

from onebox.cli.metric_format import fmt
from onebox.cli.output import console, human_size, print_json
from onebox.cli.state import JsonOpt, get_app
from onebox.serve.supervisor import gateway_pid
from onebox.services import topology

app = typer.Typer(
    help="Task topology: what a job or deployment ran on, its health and the probable cause.",
    no_args_is_help=True,
)

COLOURS = {"ok": "green", "warning": "yellow", "critical": "red", "unknown": "bright_black"}
SHOWN_METRICS = {
    "job": ("job_loss", "job_tokens_per_second", "job_progress_ratio"),
    "deployment": ("deployment_requests_per_second", "deployment_errors_per_second", "deployment_queue"),
    "process": ("task_cpu_cores", "task_memory_rss_bytes", "task_gpu_memory_bytes"),
    "node": ("cpu_usage_ratio", "memory_usage_ratio", "fs_usage_ratio"),
    "cpus": ("cpu_usage_ratio", "cpu_busiest_core_ratio"),
    "memory": ("memory_usage_ratio", "memory_used_bytes"),
    "filesystem": ("fs_usage_ratio", "fs_used_bytes"),
    "gpu": ("gpu_utilization_ratio", "gpu_temperature_celsius", "gpu_ecc_uncorrected_errors"),
}
"""The few metrics worth a glance on each kind of line (``--json`` has them all)."""


UNITS = ("_ratio", "_bytes", "_celsius", "_per_second", "_seconds", "_cores")


def _metric_label(metric: str) -> str:
    """``memory_usage_ratio`` -> ``memory usage``: the value carries its unit."""
    for unit in UNITS:
        metric = metric.removesuffix(unit)
    return metric.removeprefix("task_").removeprefix("deployment_").replace("_", " ")


def _details(n: dict[str, Any]) -> str:
    a, kind = n["attrs"], n["kind"]
    parts = []
    if kind in ("job", "deployment"):
        parts.append(str(a.get("status")))
    if kind == "process":
        if a.get("state"):
            parts.append(str(a["state"]))
        if a.get("rss_bytes"):
            parts.append(f"rss {human_size(a['rss_bytes'])}")
        if a.get("exit_code") is not None:
            parts.append(f"exit {a['exit_code']}")
    if kind == "checkpoint" and a.get("bytes"):
        parts.append(human_size(a["bytes"]) + (", resume point" if a.get("marked") else ""))
    if kind == "report":
        for ref, scores in (a.get("scores") or {}).items():
            parts.append(f"{ref}: " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))
    if kind == "api_key" and a.get("user"):
        parts.append(f"user {a['user']}, {a.get('active_minutes', 0)} active min")
    if kind == "gateway" and a.get("pid"):
        parts.append(f"pid {a['pid']}")
    for metric in SHOWN_METRICS.get(kind, ()):
        if metric in n["metrics"]:
            parts.append(f"{_metric_label(metric)} {fmt(metric, n['metrics'][metric])}")
    return ", ".join(p for p in parts if p)


def _line(n: dict[str, Any], role: str = "") -> Text:
    colour = COLOURS.get(n["health"], "white")
    text = Text.from_markup(
        f"[{colour}]●[/] [dim]{n['kind'].replace('_', ' ')}[/] [bold]{escape(n['label'])}[/]"
    )
    if role and role not in (n["kind"], "model_version"):
        text.append(f" ({role.replace('_', ' ')})", style="dim")
    text.append(f"  {n['health']}", style=colour)
    details = _details(n)
    if details:
        text.append(f"  {details}")
    if n["reasons"]:
        text.append(f"  — {n['reasons'][0]}", style=colour)
    return text


class _Renderer:
    def __init__(self, graph: dict[str, Any]) -> None:
        self.g = graph
        self.nodes = {n["id"]: n for n in graph["nodes"]}
        self.shown: set[str] = set()

    def out(self, src: str, *kinds: str) -> list[dict[str, Any]]:
        return [e for e in self.g["edges"] if e["source"] == src and e["kind"] in kinds]

    def into(self, dst: str, *kinds: str) -> list[dict[str, Any]]:
        return [e for e in self.g["edges"] if e["target"] == dst and e["kind"] in kinds]

    def add(self, tree: Tree, node_id: str, role: str = "") -> Tree | None:
        n = self.nodes[node_id]
        if node_id in self.shown:
            tree.add(Text.from_markup(f"[dim]{escape(n['kind'])} {escape(n['label'])} (above)[/]"))
            return None
        self.shown.add(node_id)
        return tree.add(_line(n, role))

    def process(self, tree: Tree, proc_id: str) -> None:
        branch = self.add(tree, proc_id)
        if branch is None:
            return
        used = [e["target"] for e in self.out(proc_id, "uses")]
        for e in self.out(proc_id, "runs_on"):
            node_branch = self.add(branch, e["target"])
            if node_branch is not None:
                for dev in used:
                    self.add(node_branch, dev)

    def tree(self) -> Tree:
        root = self.g["root"]
        self.shown.add(root)
        tree = Tree(_line(self.nodes[root]))
        inputs = self.into(root, "input")
        if inputs:
            branch = tree.add("[bold]inputs[/]")
            for e in inputs:
                self.add(branch, e["source"], e["role"])
        gateways = self.into(root, "routes")
        for e in gateways:
            gw = self.add(tree, e["source"])
            if gw is None:
                continue
            for k in self.into(e["source"], "calls"):
                self.add(gw, k["source"])
        procs = self.out(root, "runs_as")
        branch = tree.add("[bold]processes[/]")
        for e in procs:
            self.process(branch, e["target"])
        if not procs:
            branch.add("[dim]no worker process[/]")
        outputs = self.out(root, "produced")
        if outputs:
            branch = tree.add("[bold]outputs[/]")
            for e in outputs:
                self.add(branch, e["target"], e["role"])
        events = self.nodes[root]["events"]
        if events:
            branch = tree.add("[bold]latest events[/]")
            for ev in events:
                colour = {"warning": "yellow", "error": "red", "critical": "red"}.get(ev["severity"], "dim")
                at = ev["at"][:19].replace("T", " ")
                branch.add(
                    Text.from_markup(f"[{colour}]{at} {escape(ev['kind'])}[/] {escape(ev['message'])}")
                )
        return tree


def render(graph: dict[str, Any]) -> RenderableType:
    """The graph as a rich tree plus a line naming the probable cause."""
    parts: list[RenderableType] = [_Renderer(graph).tree()]
    cause = graph.get("cause")
    if cause:
        nodes = {n["id"]: n for n in graph["nodes"]}
        path = " → ".join(escape(nodes[i]["label"]) for i in cause["path"] if i in nodes)
        colour = COLOURS.get(cause["health"], "white")
        parts.append(
            Text.from_markup(
                f"[bold {colour}]probable cause:[/] {escape(cause['kind'])} [bold]{escape(cause['label'])}[/]"
                f": {escape(cause['reason'])}\n[dim]path: {path}[/]"
            )
        )
    return Group(*parts)


def _show(graph: dict[str, Any], json_out: bool) -> None:
    if json_out:
        print_json(graph)
    else:
        console.print(render(graph))


@app.command("job")
def job_command(
    job: Annotated[str, typer.Argument(help="Job id or a unique prefix of it.")],
    json_out: JsonOpt = False,
) -> None:
    """A job's inputs, worker, node and devices, outputs, health and probable cause."""
    _show(topology.job_topology(get_app(), job), json_out)


@app.command("deployment")
def deployment_command(
    name: Annotated[str, typer.Argument(help="Deployment name.")],
    json_out: JsonOpt = False,
) -> None:
    """A deployment's model and adapters, replicas, node and devices, gateway and recent API keys."""
    a = get_app()
    pid = gateway_pid(a.settings)
    graph = topology.deployment_topology(a, name, gateway_running=pid is not None, gateway_pid=pid)
    _show(graph, json_out)

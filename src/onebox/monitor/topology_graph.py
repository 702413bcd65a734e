"""The task topology as a typed graph: nodes (a dataset version, a job, a worker process, a GPU...)
each with a health, the reasons for it and its latest events; typed edges between them.

Plain data with no store or psutil in sight, so the console, the API and the CLI all get the same
JSON, and the health rules and the cause search can be tested on hand-made graphs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

OK = "ok"
WARNING = "warning"
CRITICAL = "critical"
UNKNOWN = "unknown"
HEALTHS = (OK, UNKNOWN, WARNING, CRITICAL)
"""Least to most alarming: ``unknown`` (no data) ranks above ``ok`` so that a graph with an
unmonitored node does not claim to be all ok, and below the states backed by evidence."""

# node kinds
JOB = "job"
DEPLOYMENT = "deployment"
DATASET_VERSION = "dataset_version"
MODEL_VERSION = "model_version"
ADAPTER = "adapter"
PROCESS = "process"
NODE = "node"
CPUS = "cpus"
MEMORY = "memory"
GPU = "gpu"
FILESYSTEM = "filesystem"
CHECKPOINT = "checkpoint"
REPORT = "report"
GATEWAY = "gateway"
API_KEY = "api_key"
KINDS = (
    JOB, DEPLOYMENT, DATASET_VERSION, MODEL_VERSION, ADAPTER, PROCESS, NODE, CPUS, MEMORY, GPU,
    FILESYSTEM, CHECKPOINT, REPORT, GATEWAY, API_KEY,
)  # fmt: skip
TASK_KINDS = (JOB, DEPLOYMENT)
DEVICE_KINDS = (CPUS, MEMORY, GPU, FILESYSTEM)

# edge kinds, each read "source <kind> target"
INPUT = "input"
"""An input version -> the task that read it (``role`` says how: dataset, base, adapter...)."""
RUNS_AS = "runs_as"
"""Task -> one of its worker processes."""
RUNS_ON = "runs_on"
"""Process -> the node it ran on."""
HAS = "has"
"""Node -> one of its devices."""
USES = "uses"
"""Process -> a device it used (its GPUs, the disk it writes to, the node's CPUs and memory)."""
PRODUCED = "produced"
"""Task -> an output (checkpoint, model version, evaluation report)."""
ROUTES = "routes"
"""Gateway -> a deployment it routes requests to."""
CALLS = "calls"
"""API key -> the gateway it called through."""
EDGE_KINDS = (INPUT, RUNS_AS, RUNS_ON, HAS, USES, PRODUCED, ROUTES, CALLS)


def rank(health: str) -> int:
    return HEALTHS.index(health) if health in HEALTHS else 0


def worst(*healths: str) -> str:
    return max(healths, key=rank) if healths else OK


@dataclass
class GraphNode:
    id: str
    """Unique in the graph and stable between calls: ``<kind>:<key>``."""
    kind: str
    label: str
    health: str = UNKNOWN
    reasons: list[str] = field(default_factory=list)
    """Why the node has its health, most important first (empty when ok)."""
    attrs: dict[str, Any] = field(default_factory=dict)
    """Facts about the resource (ids, status, pid, host, size...)."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Latest monitoring samples of the resource (metric -> value)."""
    events: list[dict[str, Any]] = field(default_factory=list)
    """Its latest events, newest first."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "label": self.label,
            "health": self.health,
            "reasons": list(self.reasons),
            "attrs": dict(self.attrs),
            "metrics": dict(self.metrics),
            "events": list(self.events),
        }


@dataclass(frozen=True)
class GraphEdge:
    source: str
    target: str
    kind: str
    role: str = ""
    """A finer label where the kind has several (input: dataset, base_model, adapter...)."""

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "kind": self.kind, "role": self.role}


@dataclass
class Cause:
    """The graph node most likely behind an unhealthy task."""

    node: str
    kind: str
    label: str
    health: str
    reason: str
    path: list[str]
    """Node ids from the task to the cause, following the edges walked."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "kind": self.kind,
            "label": self.label,
            "health": self.health,
            "reason": self.reason,
            "path": list(self.path),
        }


@dataclass
class Graph:
    root: str
    """The task's node id."""
    nodes: dict[str, GraphNode] = field(default_factory=dict)
    edges: list[GraphEdge] = field(default_factory=list)
    cause: Cause | None = None
    generated_at: float = 0.0

    def add(self, node: GraphNode) -> GraphNode:
        """Add ``node`` or return the one already there under its id (a shared node, e.g. the
        machine two replicas run on, appears once)."""
        return self.nodes.setdefault(node.id, node)

    def link(self, source: str, target: str, kind: str, role: str = "") -> None:
        edge = GraphEdge(source, target, kind, role)
        if edge not in self.edges:
            self.edges.append(edge)

    def out(self, node_id: str, *kinds: str) -> list[GraphEdge]:
        return [e for e in self.edges if e.source == node_id and (not kinds or e.kind in kinds)]

    def into(self, node_id: str, *kinds: str) -> list[GraphEdge]:
        return [e for e in self.edges if e.target == node_id and (not kinds or e.kind in kinds)]

    @property
    def task(self) -> GraphNode:
        return self.nodes[self.root]

    def as_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "kind": self.task.kind,
            "health": self.task.health,
            "generated_at": self.generated_at,
            "nodes": [n.as_dict() for n in self.nodes.values()],
            "edges": [e.as_dict() for e in self.edges],
            "cause": self.cause.as_dict() if self.cause is not None else None,
        }

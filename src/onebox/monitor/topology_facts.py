"""What the topology of one task is built from: plain facts gathered from the store, the latest
monitoring samples, the events and (on this host) the live processes.

The service fills these in; :func:`onebox.monitor.topology.build` turns them into a graph
without reading anything else, so every health rule and the cause search run on hand-made facts
in tests exactly as on real ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

SEVERE = ("error", "critical")
"""Event severities that make a resource critical (``warning`` makes it a warning)."""


@dataclass(frozen=True)
class EventFact:
    kind: str
    severity: str
    message: str
    at: float
    """Unix seconds."""
    resource_type: str = ""
    resource_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "severity": self.severity,
            "message": self.message,
            "at": datetime.fromtimestamp(self.at, UTC).isoformat(),
        }


@dataclass
class TaskFacts:
    """The job or deployment at the root of the graph."""

    kind: str
    """``job`` or ``deployment``."""
    id: str
    name: str
    status: str
    type: str = ""
    """The job type (train, eval...) or the deployment kind (text, embedding)."""
    error: str | None = None
    started_at: float | None = None
    """When the current attempt started (jobs); events before it belong to earlier attempts."""
    finished_at: float | None = None
    heartbeat_age_s: float | None = None
    """Seconds since an active job's worker last reported."""
    heartbeat_stale_s: float = 60.0
    """A heartbeat older than this means the worker is stuck or gone."""
    replicas: int = 0
    """Replicas a deployment asks for."""
    attrs: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    """The task's latest task-level samples (loss, tokens/s, requests/s, its processes' CPU...)."""
    events: list[EventFact] = field(default_factory=list)

    @property
    def active(self) -> bool:
        """A worker should be alive now."""
        if self.kind == "job":
            return self.status in ("running", "cancelling")
        return self.replicas > 0 and self.status not in ("stopped", "deleted")


@dataclass
class VersionFacts:
    """An input or output of the task: a dataset or model version, an adapter, a checkpoint, an
    evaluation report."""

    id: str
    kind: str
    label: str
    role: str
    """How the task relates to it (dataset, base_model, adapter, evaluated, checkpoint...)."""
    status: str = "ready"
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LiveProcess:
    """A process as psutil sees it now on this host."""

    alive: bool
    status: str = ""
    """psutil's status (running, sleeping, zombie...); empty when gone."""
    rss_bytes: int | None = None
    cpu_seconds: float | None = None
    children: int = 0
    started_at: float | None = None


@dataclass
class ProcessFacts:
    """One worker process of the task (a job attempt's worker, a deployment replica)."""

    key: str
    """Unique within the task: ``worker``, ``replica-0``..."""
    label: str
    host: str | None
    """The host it ran on (a key of :attr:`TopologyFacts.nodes`)."""
    pid: int | None
    state: str = ""
    """The supervisor's replica state (ready, starting, backoff, failed...) where known."""
    exit_code: int | None = None
    reason: str | None = None
    """Why it ended, as the executor or supervisor recorded it."""
    restarts: int = 0
    gpus: list[int] = field(default_factory=list)
    """GPU indices it was given."""
    live: LiveProcess | None = None
    """None where it could not be looked at (another host, no pid)."""
    metrics: dict[str, float] = field(default_factory=dict)
    events: list[EventFact] = field(default_factory=list)


@dataclass
class NodeFacts:
    """A machine a process ran on, with the latest samples of its components."""

    id: str
    """The node's name in monitoring (the host name when it was never monitored)."""
    hostname: str
    monitored: bool
    up: bool | None = None
    heartbeat_age_s: float | None = None
    problems: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, float] = field(default_factory=dict)
    components: dict[str, dict[str, float]] = field(default_factory=dict)
    """resource (cpu0, memory, fs:/, gpu1...) -> metric -> the worst value over the task's window."""
    events: list[EventFact] = field(default_factory=list)
    """Events about the node or one of its components (``data.resource`` names the component)."""


@dataclass
class GatewayFacts:
    running: bool | None
    """Whether a gateway serves this home now (None: cannot tell)."""
    pid: int | None = None
    host: str | None = None
    events: list[EventFact] = field(default_factory=list)


@dataclass
class KeyFacts:
    """An API key of the project seen calling recently (never its secret)."""

    id: str
    prefix: str
    name: str
    user: str
    state: str
    """active, revoked or expired."""
    last_used_at: float | None = None
    active_minutes: int = 0
    """Minutes in the window in which it was used (the gateway records a use at most once a minute)."""
    refused: int = 0
    """Calls with it refused in the window (revoked, expired...)."""


@dataclass
class TopologyFacts:
    task: TaskFacts
    inputs: list[VersionFacts] = field(default_factory=list)
    outputs: list[VersionFacts] = field(default_factory=list)
    processes: list[ProcessFacts] = field(default_factory=list)
    nodes: dict[str, NodeFacts] = field(default_factory=dict)
    """By the host name processes give."""
    data_path: str | None = None
    """Where the task reads and writes its files: the file system holding it is one of its devices."""
    gateway: GatewayFacts | None = None
    keys: list[KeyFacts] = field(default_factory=list)
    hidden_keys: int = 0
    """Keys of the project used recently that the caller may not see."""
    now: float = 0.0

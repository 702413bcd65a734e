"""What every collector returns: samples at one of the four levels, stamped with their node."""

from __future__ import annotations

from dataclasses import dataclass, field

COMPONENT = "component"
NODE = "node"
CLUSTER = "cluster"
TASK = "task"
LEVELS = (COMPONENT, NODE, CLUSTER, TASK)
"""Component: one core, disk, NIC or GPU; node: one machine; cluster: all machines; task: one job
or deployment and its processes."""

CLUSTER_RESOURCE = "cluster"


@dataclass(frozen=True)
class Sample:
    """One value of one metric of one resource (``cpu0``, ``gpu1``, ``fs:/``, ``job:job_ab12``)."""

    level: str
    resource: str
    metric: str
    value: float
    name: str = ""
    """A display name for the resource (a job's or deployment's name, a GPU's model)."""
    project_id: str | None = None
    """Set on task-level samples only: who may see them."""
    project: str = ""
    """The project's name, for labels."""


@dataclass
class Snapshot:
    """One collection pass on one node at ``ts`` (Unix seconds)."""

    node: str
    ts: float
    samples: list[Sample] = field(default_factory=list)

    def by_metric(self, metric: str, level: str | None = None) -> list[Sample]:
        return [s for s in self.samples if s.metric == metric and (level is None or s.level == level)]

    def value(self, metric: str, resource: str, level: str | None = None) -> float | None:
        for s in self.samples:
            if s.metric == metric and s.resource == resource and (level is None or s.level == level):
                return s.value
        return None

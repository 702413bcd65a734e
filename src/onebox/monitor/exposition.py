"""The latest snapshot in Prometheus' text format: one gauge family per catalog metric, labelled
with the four levels (``level``, ``node``, ``resource``, plus ``name`` and ``project`` for tasks),
and ``onebox_node_info`` carrying the node's software versions as labels."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily

from onebox.monitor.catalog import METRICS, prometheus_name
from onebox.monitor.node import NodeIdentity
from onebox.monitor.samples import Snapshot

LABELS = ("level", "node", "resource", "name", "project")
NODE_INFO = "onebox_node"
"""Info family (exported as ``onebox_node_info``)."""


def exported_names() -> set[str]:
    """Every metric name this module can put on ``/metrics``."""
    return {prometheus_name(m) for m in METRICS} | {NODE_INFO + "_info"}


class SnapshotCollector:
    """A prometheus_client collector over one snapshot; task samples of projects outside
    ``projects`` are left out (None: every project)."""

    def __init__(
        self, snapshot: Snapshot, node: NodeIdentity | None, projects: Collection[str] | None = None
    ) -> None:
        self.snapshot = snapshot
        self.node = node
        self.projects = projects

    def collect(self) -> Iterator[Any]:
        families: dict[str, GaugeMetricFamily] = {}
        for s in self.snapshot.samples:
            if s.project_id is not None and self.projects is not None and s.project_id not in self.projects:
                continue
            spec = METRICS.get(s.metric)
            if spec is None:
                continue
            fam = families.get(s.metric)
            if fam is None:
                fam = families[s.metric] = GaugeMetricFamily(
                    prometheus_name(s.metric), spec.help, labels=LABELS
                )
            fam.add_metric([s.level, self.snapshot.node, s.resource, s.name, s.project], s.value)
        yield from families.values()
        if self.node is not None:
            info = InfoMetricFamily(NODE_INFO, "A node's host name and software versions.", labels=["node"])
            labels = {"hostname": self.node.hostname, **self.node.versions}
            info.add_metric([self.node.id], {k.replace("-", "_"): v for k, v in labels.items()})
            yield info


def render(
    snapshot: Snapshot | None, node: NodeIdentity | None, projects: Collection[str] | None = None
) -> bytes:
    """Text-format exposition of ``snapshot`` (empty when there is none yet)."""
    if snapshot is None:
        return b""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot, node, projects))
    return generate_latest(registry)

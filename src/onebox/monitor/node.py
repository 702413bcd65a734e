"""Node level: who this machine is (id, host name, software versions, devices), its aggregates
over the component samples, and its health checks."""

from __future__ import annotations

import platform
import socket
import sys
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import psutil

from onebox import __version__
from onebox.monitor.nvml import GpuCollector
from onebox.monitor.samples import COMPONENT, NODE, Sample

FS_FULL_RATIO = 0.95
MEMORY_FULL_RATIO = 0.95
GPU_HOT_CELSIUS = 90.0
"""Health thresholds: a node past any of them is reported unhealthy (alert rules with durations
and notifications build on the same samples)."""

PACKAGES = ("torch", "transformers", "nvidia-ml-py")


@dataclass
class NodeIdentity:
    id: str
    hostname: str
    versions: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def software_versions(gpus: GpuCollector | None = None) -> dict[str, str]:
    """Versions that matter when comparing nodes (read from package metadata: nothing imported)."""
    out = {
        "onebox": __version__,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    if gpus is not None:
        out.update(gpus.versions())
    return out


def identify(node_name: str | None = None, gpus: GpuCollector | None = None) -> NodeIdentity:
    """This machine as a node: named ``node_name`` or after its host name."""
    host = socket.gethostname()
    info: dict[str, Any] = {
        "cpus": psutil.cpu_count() or 1,
        "memory_bytes": psutil.virtual_memory().total,
        "machine": platform.machine(),
        "python_executable": sys.executable,
        "boot_time": psutil.boot_time(),
        "gpus": gpus.devices() if gpus is not None else [],
    }
    return NodeIdentity(id=node_name or host, hostname=host, versions=software_versions(gpus), info=info)


def _values(samples: list[Sample], metric: str) -> list[float]:
    return [s.value for s in samples if s.metric == metric and s.level == COMPONENT]


def aggregate(
    component: list[Sample], node: NodeIdentity, now: float, problems: list[str] | None = None
) -> list[Sample]:
    """Node-level samples summarising the component samples of one pass (``problems``: from
    :func:`health_problems`)."""
    res = node.id
    out: dict[str, float] = {"cpu_count": float(node.info.get("cpus", 1))}
    cores = _values(component, "cpu_usage_ratio")
    if cores:
        out["cpu_usage_ratio"] = sum(cores) / len(cores)
    out["load_average_1m"] = psutil.getloadavg()[0]
    for metric in ("memory_total_bytes", "memory_used_bytes", "memory_usage_ratio"):
        vals = _values(component, metric)
        if vals:
            out[metric] = vals[0]
    for metric, reduce in (
        ("fs_usage_ratio", max),
        ("disk_read_bytes_per_second", sum),
        ("disk_write_bytes_per_second", sum),
        ("net_receive_bytes_per_second", sum),
        ("net_transmit_bytes_per_second", sum),
        ("gpu_memory_total_bytes", sum),
        ("gpu_memory_used_bytes", sum),
        ("gpu_temperature_celsius", max),
        ("gpu_power_watts", sum),
        ("gpu_ecc_uncorrected_errors", sum),
        ("gpu_throttled", max),
    ):
        vals = _values(component, metric)
        if vals:
            out[metric] = float(reduce(vals))
    out["gpu_count"] = float(len(node.info.get("gpus", [])))
    util = _values(component, "gpu_utilization_ratio")
    if util:
        out["gpu_utilization_ratio"] = sum(util) / len(util)
    out["node_up"] = 1.0
    out["node_healthy"] = 0.0 if problems else 1.0
    out["node_heartbeat_timestamp_seconds"] = now
    out["node_uptime_seconds"] = max(now - float(node.info.get("boot_time", now)), 0.0)
    return [Sample(NODE, res, metric, v, name=node.hostname) for metric, v in out.items()]


def health_problems(component: list[Sample], gpu_problems: list[str] | None = None) -> list[str]:
    """What is wrong with the node now, one line each (empty: healthy)."""
    problems = list(gpu_problems or [])
    for s in component:
        if s.metric == "fs_usage_ratio" and s.value >= FS_FULL_RATIO:
            problems.append(f"file system {s.resource.removeprefix('fs:')} is {s.value:.0%} full")
        elif s.metric == "memory_usage_ratio" and s.value >= MEMORY_FULL_RATIO:
            problems.append(f"memory is {s.value:.0%} used")
        elif s.metric == "gpu_temperature_celsius" and s.value >= GPU_HOT_CELSIUS:
            problems.append(f"{s.resource} is at {s.value:.0f} °C")
        elif s.metric == "gpu_ecc_uncorrected_errors" and s.value > 0:
            problems.append(f"{s.resource} has {s.value:.0f} uncorrected ECC errors")
        elif s.metric == "gpu_throttled" and s.value > 0:
            problems.append(f"{s.resource} is throttled")
    return problems

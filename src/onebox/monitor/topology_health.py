"""Health of each kind of topology node, from its facts: ok, warning, critical or unknown, with
the reasons in words a person acts on ("gpu0 has 2 uncorrected ECC errors", "worker killed by
SIGKILL").

Thresholds follow the alert rules of the issue (disk above 90%, GPU too hot, ECC errors, lost
heartbeat): a warning before trouble, critical once the resource fails or fills.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable

from onebox.monitor.topology_facts import (
    SEVERE,
    EventFact,
    GatewayFacts,
    KeyFacts,
    NodeFacts,
    ProcessFacts,
    TaskFacts,
    VersionFacts,
)
from onebox.monitor.topology_graph import CRITICAL, OK, UNKNOWN, WARNING, rank

Health = tuple[str, list[str]]

RESOLVED_ALERT = "alert.resolved."
"""Kind prefix of an alert that is over (alerts are events: ``alert.firing.<rule>`` until then)."""

FS_WARNING_RATIO = 0.90
FS_CRITICAL_RATIO = 0.95
MEMORY_WARNING_RATIO = 0.90
MEMORY_CRITICAL_RATIO = 0.95
GPU_WARNING_CELSIUS = 85.0
GPU_CRITICAL_CELSIUS = 90.0


class Verdict:
    """Collects findings and keeps the worst; reasons come out most severe first."""

    def __init__(self) -> None:
        self.found: list[tuple[str, str]] = []

    def add(self, health: str, reason: str) -> None:
        if all(r != reason for _, r in self.found):
            self.found.append((health, reason))

    def events(self, events: Iterable[EventFact]) -> None:
        """Warning and error events count, newest first; an alert that resolved does not."""
        for e in sorted(events, key=lambda e: e.at, reverse=True):
            if e.kind.startswith(RESOLVED_ALERT):
                continue
            health = CRITICAL if e.severity in SEVERE else WARNING if e.severity == "warning" else None
            if health is not None:
                self.add(health, f"{e.kind}: {e.message}")

    def result(self) -> Health:
        if not self.found:
            return OK, []
        ordered = sorted(self.found, key=lambda f: rank(f[0]), reverse=True)
        return ordered[0][0], [r for h, r in ordered if h != OK]


def signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def task_health(t: TaskFacts) -> Health:
    v = Verdict()
    if t.kind == "job":
        if t.status == "failed":
            v.add(CRITICAL, f"failed: {t.error}" if t.error else "failed")
        elif t.active and t.heartbeat_age_s is not None and t.heartbeat_age_s > t.heartbeat_stale_s:
            v.add(CRITICAL, f"no heartbeat from its worker for {t.heartbeat_age_s:.0f} s")
    else:
        if t.status == "failed":
            v.add(CRITICAL, f"failed: {t.error}" if t.error else "no replica could start")
        elif t.status == "degraded":
            v.add(WARNING, "degraded: some replicas are not ready")
        elif t.status == "starting" and t.replicas > 0:
            v.add(WARNING, "starting: no replica is ready yet")
        errors = t.metrics.get("deployment_errors_per_second")
        if errors:
            v.add(WARNING, f"answering {errors:.2f} requests/s with a server error")
    v.events(t.events)
    return v.result()


def process_health(p: ProcessFacts, task: TaskFacts) -> Health:
    v = Verdict()
    if p.state in ("backoff", "failed"):
        what = "failed and was given up" if p.state == "failed" else f"crashed (restart {p.restarts})"
        first = (p.reason or "").strip().splitlines()[:1]
        v.add(CRITICAL, f"{what}" + (f": {first[0]}" if first else ""))
    elif p.state == "starting":
        v.add(WARNING, "starting")
    if task.active and p.state not in ("backoff", "failed", "starting", "stopping"):
        if p.live is None:
            v.add(UNKNOWN, f"not inspected (pid {p.pid} on {p.host})" if p.pid else "no worker pid recorded")
        elif not p.live.alive:
            v.add(CRITICAL, f"worker pid {p.pid} is gone")
        elif p.live.status == "zombie":
            v.add(CRITICAL, f"worker pid {p.pid} is a zombie (exited, not reaped)")
    elif not task.active and task.kind == "job" and task.status != "cancelled":
        if p.exit_code is not None and p.exit_code < 0:
            v.add(CRITICAL, f"worker killed by {signal_name(p.exit_code)}")
        elif p.exit_code:
            v.add(CRITICAL, f"worker exited with code {p.exit_code}")
        if p.reason and task.status == "failed":
            v.add(CRITICAL, p.reason)
    v.events(p.events)
    return v.result()


def node_health(n: NodeFacts, task_active: bool) -> Health:
    if not n.monitored:
        return UNKNOWN, [f"no monitoring data for {n.hostname} (no `onebox serve` collects there)"]
    v = Verdict()
    if n.up is False:
        age = f" for {n.heartbeat_age_s:.0f} s" if n.heartbeat_age_s is not None else ""
        v.add(CRITICAL if task_active else UNKNOWN, f"lost: no heartbeat{age}")
    for problem in n.problems:
        v.add(WARNING, problem)
    v.events(e for e in n.events if not e.data.get("resource"))
    return v.result()


def gpu_health(metrics: dict[str, float], events: list[EventFact], name: str) -> Health:
    v = Verdict()
    if not metrics:
        v.add(UNKNOWN, f"no samples of {name}")
    ecc = metrics.get("gpu_ecc_uncorrected_errors")
    if ecc:
        v.add(CRITICAL, f"{name} has {ecc:.0f} uncorrected ECC errors")
    temp = metrics.get("gpu_temperature_celsius")
    if temp is not None and temp >= GPU_CRITICAL_CELSIUS:
        v.add(CRITICAL, f"{name} is at {temp:.0f} °C")
    elif temp is not None and temp >= GPU_WARNING_CELSIUS:
        v.add(WARNING, f"{name} is warm ({temp:.0f} °C)")
    if metrics.get("gpu_throttled"):
        v.add(WARNING, f"{name} is throttled")
    corrected = metrics.get("gpu_ecc_corrected_errors")
    if corrected:
        v.add(WARNING, f"{name} corrected {corrected:.0f} ECC errors")
    v.events(events)
    return v.result()


def filesystem_health(metrics: dict[str, float], events: list[EventFact], mount: str) -> Health:
    v = Verdict()
    ratio = metrics.get("fs_usage_ratio")
    if ratio is None:
        v.add(UNKNOWN, f"no samples of the file system {mount}")
    elif ratio >= FS_CRITICAL_RATIO:
        v.add(CRITICAL, f"file system {mount} is {ratio:.0%} full")
    elif ratio >= FS_WARNING_RATIO:
        v.add(WARNING, f"file system {mount} is {ratio:.0%} full")
    v.events(events)
    return v.result()


def memory_health(metrics: dict[str, float], events: list[EventFact]) -> Health:
    v = Verdict()
    ratio = metrics.get("memory_usage_ratio")
    if ratio is None:
        v.add(UNKNOWN, "no samples of memory")
    elif ratio >= MEMORY_CRITICAL_RATIO:
        v.add(CRITICAL, f"memory is {ratio:.0%} used")
    elif ratio >= MEMORY_WARNING_RATIO:
        v.add(WARNING, f"memory is {ratio:.0%} used")
    v.events(events)
    return v.result()


def cpus_health(metrics: dict[str, float], events: list[EventFact]) -> Health:
    """Busy CPUs are not a fault; only missing data or events about them count."""
    v = Verdict()
    if not metrics:
        v.add(UNKNOWN, "no samples of the CPUs")
    v.events(events)
    return v.result()


def version_health(ver: VersionFacts) -> Health:
    if ver.status in ("ready", "ok", ""):
        return OK, []
    if ver.status == "failed":
        return CRITICAL, [f"{ver.label} failed"]
    return WARNING, [f"{ver.label} is {ver.status}"]


def gateway_health(g: GatewayFacts, task: TaskFacts) -> Health:
    v = Verdict()
    if g.running is None:
        v.add(UNKNOWN, "cannot tell whether a gateway runs")
    elif not g.running and task.active:
        v.add(CRITICAL, "no gateway is running: nothing serves this deployment (`onebox serve`)")
    v.events(g.events)
    return v.result()


def key_health(k: KeyFacts) -> Health:
    v = Verdict()
    if k.state != "active":
        v.add(WARNING, f"{k.prefix} is {k.state}: clients still using it are refused")
    if k.refused:
        v.add(WARNING, f"{k.refused} refused calls recently")
    return v.result()

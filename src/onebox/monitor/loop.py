"""The monitor of one node: a pass collects every level, stores it, and keeps rollups and
retention; :class:`MonitorTask` runs passes at an interval as an asyncio task (in ``onebox serve``).

A pass runs in a worker thread (psutil and the store block); what the gateway knows about its
deployments is gathered on the event loop first and handed in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from onebox.config import Settings
from onebox.monitor import cluster
from onebox.monitor.alerts import AlertEngine
from onebox.monitor.host import HostCollector
from onebox.monitor.node import NodeIdentity, aggregate, health_problems, identify
from onebox.monitor.nvml import GpuCollector
from onebox.monitor.rules import load_rules
from onebox.monitor.samples import NODE, Sample, Snapshot
from onebox.monitor.tasks import DeploymentCounters, TaskCollector
from onebox.monitor.tsdb import SeriesWriter
from onebox.store.db import Database

log = logging.getLogger(__name__)

PRUNE_EVERY_S = 600.0
"""Retention runs at most this often (deleting is the costly part of upkeep)."""

Clock = Callable[[], float]


@dataclass(frozen=True)
class MonitorConfig:
    interval_s: float = 10.0
    """Seconds between passes (0: the monitor does not run)."""
    raw_retention_s: int = 24 * 3600
    """How long raw points are kept."""
    rollup_s: int = 60
    """Width of the rollup buckets."""
    rollup_retention_s: int = 30 * 24 * 3600
    """How long rollups are kept."""
    node_name: str | None = None
    """This node's name (default: the host name)."""
    alerts: bool = False
    """Evaluate alert rules after each pass (``onebox serve`` turns it on)."""
    alert_rules_file: Path | None = None
    """The operator's rules file, merged over the shipped rules."""
    alert_webhooks: tuple[str, ...] = ()
    alert_webhook_max_attempts: int = 5
    alert_webhook_timeout_s: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings) -> MonitorConfig:
        return cls(
            interval_s=settings.monitor_interval_s,
            raw_retention_s=settings.monitor_raw_retention_s,
            rollup_s=settings.monitor_rollup_s,
            rollup_retention_s=settings.monitor_rollup_retention_s,
            node_name=settings.node_name,
            alerts=settings.alerts_enabled,
            alert_rules_file=settings.alert_rules_file,
            alert_webhooks=tuple(settings.alert_webhooks),
            alert_webhook_max_attempts=settings.alert_webhook_max_attempts,
            alert_webhook_timeout_s=settings.alert_webhook_timeout_s,
        )


class Monitor:
    """Collects, stores and keeps the time series of one node."""

    def __init__(
        self,
        db: Database,
        config: MonitorConfig | None = None,
        *,
        gpus: GpuCollector | None = None,
        open_gpus: bool = True,
        clock: Clock = time.time,
        alerts: AlertEngine | None = None,
    ) -> None:
        self.db = db
        self.config = config or MonitorConfig()
        self.clock = clock
        rules = None
        if alerts is None and self.config.alerts:  # a bad rules file fails before anything opens
            rules = load_rules(self.config.alert_rules_file, self.config.alert_webhooks)
        self.gpus = gpus if gpus is not None else (GpuCollector.open() if open_gpus else None)
        self.node: NodeIdentity = identify(self.config.node_name, self.gpus)
        self.host = HostCollector()
        self.tasks = TaskCollector(db, self.node.hostname)
        self.writer = SeriesWriter(db, self.node.id, rollup_s=self.config.rollup_s)
        self.latest: Snapshot | None = None
        self.problems: list[str] = []
        self._last_prune = -float("inf")
        self.alerts = alerts
        """Evaluates the alert rules after each pass (built from the config when it asks for it)."""
        if rules is not None:
            self.alerts = AlertEngine.build(
                db,
                self.node.id,
                rules,
                max_attempts=self.config.alert_webhook_max_attempts,
                timeout_s=self.config.alert_webhook_timeout_s,
            )

    def collect(self, deployments: list[DeploymentCounters] | None = None) -> Snapshot:
        """One pass over every level; writes the node's heartbeat (the cluster level reads it)."""
        now = self.clock()
        component = self.host.collect(now)
        if self.gpus is not None:
            component += self.gpus.collect()
        self.problems = health_problems(component, self.gpus.problems if self.gpus is not None else None)
        node = aggregate(component, self.node, now, self.problems)
        gpu_memory = self.gpus.process_memory() if self.gpus is not None else None
        task: list[Sample] = []
        try:
            task = self.tasks.collect(now, deployments, gpu_memory)
        except Exception:  # the store is briefly unreachable: the hardware is still worth a pass
            log.exception("task-level collection failed")
        cluster.heartbeat(
            self.db,
            self.node,
            now=now,
            interval_s=self.config.interval_s or 10.0,
            summary={s.metric: s.value for s in node if s.level == NODE},
            problems=self.problems,
        )
        agg = cluster.aggregate(
            self.db, now=now, jobs_running=self.tasks.jobs_running, deployments=self.tasks.deployments
        )
        return Snapshot(self.node.id, now, [*component, *node, *agg, *task])

    def step(self, deployments: list[DeploymentCounters] | None = None) -> Snapshot:
        """Collect, store, then roll up completed buckets and (now and then) apply retention."""
        snap = self.collect(deployments)
        self.writer.write(snap)
        self.latest = snap
        self.writer.rollup(snap.ts)
        if snap.ts - self._last_prune >= PRUNE_EVERY_S:
            self.writer.prune(
                snap.ts,
                raw_retention_s=self.config.raw_retention_s,
                rollup_retention_s=self.config.rollup_retention_s,
            )
            self._last_prune = snap.ts
        if self.alerts is not None:
            try:
                self.alerts.evaluate(snap)
            except Exception:  # a bad alert pass must not cost the monitoring itself
                log.exception("alert evaluation failed")
        return snap

    def close(self) -> None:
        if self.alerts is not None:
            self.alerts.close()
        if self.gpus is not None:
            self.gpus.close()
            self.gpus = None


DeploymentSource = Callable[[], Awaitable[list[DeploymentCounters]]]


class MonitorTask:
    """Runs ``monitor.step`` every ``interval_s`` in the background of an asyncio app."""

    def __init__(self, monitor: Monitor, deployments: DeploymentSource | None = None) -> None:
        self.monitor = monitor
        self.deployments = deployments
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one pass at a time: the writer and rate state are not shared-safe
        self._inflight: asyncio.Future[Snapshot] | None = None

    def start(self) -> None:
        if self.monitor.config.interval_s > 0:
            self._task = asyncio.create_task(self._run(), name="onebox-monitor")

    async def pass_once(self) -> Snapshot:
        async with self._lock:
            counters = await self.deployments() if self.deployments is not None else None
            # shielded and remembered: cancelling the awaiting task does not stop the thread
            self._inflight = asyncio.ensure_future(asyncio.to_thread(self.monitor.step, counters))
            return await asyncio.shield(self._inflight)

    async def snapshot(self) -> Snapshot:
        """The latest snapshot, after a first pass if none ran yet (a scrape right after start)."""
        latest = self.monitor.latest
        if latest is not None:
            return latest
        async with self._lock:
            latest = self.monitor.latest
        return latest if latest is not None else await self.pass_once()

    async def _run(self) -> None:
        interval = self.monitor.config.interval_s
        while True:
            started = time.monotonic()
            try:
                await self.pass_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a store hiccup or a bug: keep monitoring
                log.exception("monitoring pass failed")
            await asyncio.sleep(max(interval - (time.monotonic() - started), 0.1))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._inflight is not None:  # a pass still running in its thread must end before close
            with contextlib.suppress(Exception):
                await self._inflight
        await asyncio.to_thread(self.monitor.close)

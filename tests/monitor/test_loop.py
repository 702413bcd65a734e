"""One node's monitor end to end: every level in a pass, stored, rolled up and pruned on an
injected clock; the node's heartbeat and the cluster aggregate; the asyncio task."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select

from onebox.monitor import cluster
from onebox.monitor.loop import Monitor, MonitorConfig, MonitorTask
from onebox.monitor.nvml import GpuCollector
from onebox.monitor.samples import LEVELS
from onebox.services.context import App
from onebox.store.tables import MetricPoint, Node
from tests.monitor.fakes import FakeNvml
from tests.monitor.helpers import running_job

T0 = 1_800_000_000.0


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _oldest(app: App, resolution: int) -> float:
    with app.db.session() as s:
        ts = s.scalar(select(func.min(MetricPoint.ts)).where(MetricPoint.resolution == resolution))
    return ts / 1000


def _count(app: App, resolution: int) -> int:
    with app.db.session() as s:
        return (
            s.scalar(
                select(func.count()).select_from(MetricPoint).where(MetricPoint.resolution == resolution)
            )
            or 0
        )


def test_a_pass_covers_four_levels_and_is_stored(sqlite_app: App) -> None:
    running_job(sqlite_app, loss=0.5)
    clock = Clock(T0)
    mon = Monitor(
        sqlite_app.db, MonitorConfig(node_name="box-a"), gpus=GpuCollector.open(FakeNvml()), clock=clock
    )
    mon.step()
    clock.t += 10
    snap = mon.step()
    assert {s.level for s in snap.samples} == set(LEVELS)
    assert snap.value("gpu_count", "box-a", "node") == 2 and snap.value("cluster_nodes", "cluster") == 1
    assert snap.value("cluster_jobs_running", "cluster") == 1
    assert snap.value("node_healthy", "box-a") == 0  # the fake gpu1 is hot and throttled
    assert any(p.startswith("gpu1 is at 94") for p in mon.problems)
    with sqlite_app.db.session() as s:
        node = s.get_one(Node, "box-a")
        assert not node.healthy and node.versions["nvidia_driver"] == "550.54.15"
        assert node.summary["gpu_count"] == 2 and len(node.info["gpus"]) == 2
    assert _count(sqlite_app, 0) >= len(snap.samples)
    mon.close()


def test_rollups_and_retention_follow_the_clock(sqlite_app: App) -> None:
    clock = Clock(T0)
    cfg = MonitorConfig(node_name="n", raw_retention_s=3600, rollup_s=60, rollup_retention_s=7200)
    mon = Monitor(sqlite_app.db, cfg, open_gpus=False, clock=clock)
    for _ in range(13):  # two minutes at 10 s
        mon.step()
        clock.t += 10
    assert _oldest(sqlite_app, 60) == T0 and _oldest(sqlite_app, 0) == T0
    clock.t = T0 + 3600 + 130  # raw points of the first minutes are past their hour
    mon.step()
    assert _oldest(sqlite_app, 0) == T0 + 3730 and _oldest(sqlite_app, 60) == T0  # rollups stay
    clock.t = T0 + 3 * 3600
    mon.step()
    assert _oldest(sqlite_app, 60) == T0 + 3720  # the first minutes' rollups are past two hours


def test_lost_nodes_count_out_of_the_cluster(sqlite_app: App) -> None:
    a = Monitor(sqlite_app.db, MonitorConfig(node_name="a"), open_gpus=False, clock=Clock(T0))
    b = Monitor(sqlite_app.db, MonitorConfig(node_name="b"), open_gpus=False, clock=Clock(T0 + 100))
    a.step()
    snap = b.step()  # a's heartbeat is 100 s old: lost after 3 x 10 s
    assert snap.value("cluster_nodes", "cluster") == 2 and snap.value("cluster_nodes_up", "cluster") == 1
    statuses = {n["id"]: n["status"] for n in cluster.list_nodes(sqlite_app.db, T0 + 100)}
    assert statuses == {"a": "lost", "b": "healthy"}


def test_the_task_runs_passes_in_the_background(sqlite_app: App) -> None:
    async def main() -> int:
        mon = Monitor(sqlite_app.db, MonitorConfig(interval_s=1), open_gpus=False)
        task = MonitorTask(mon)
        task.start()
        await asyncio.sleep(1.5)
        await task.stop()
        return _count(sqlite_app, 0)

    assert asyncio.run(main()) > 0

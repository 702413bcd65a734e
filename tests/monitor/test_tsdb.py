"""Time series in the store: raw writes, rollups of completed buckets, retention, queries."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from onebox.monitor import tsdb
from onebox.monitor.samples import COMPONENT, NODE, TASK, Sample, Snapshot
from onebox.monitor.tsdb import SeriesWriter
from onebox.store.db import Database
from onebox.store.tables import MetricPoint, MetricSeries

T0 = 1_800_000_000.0  # a minute boundary (divisible by 60)
HOUR, DAY = 3600, 86400


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    d = Database(db_url)
    d.migrate()
    yield d
    d.dispose()


def snap(ts: float, value: float, node: str = "n1", **extra: float) -> Snapshot:
    samples = [Sample(COMPONENT, "cpu0", "cpu_usage_ratio", value), Sample(NODE, node, "node_up", 1.0)]
    samples += [
        Sample(TASK, f"job:{k}", "job_loss", v, name=k, project_id=f"prj_{k}") for k, v in extra.items()
    ]
    return Snapshot(node, ts, samples)


def points(db: Database, resolution: int) -> list[tuple[int, float]]:
    with db.session() as s:
        q = (
            select(MetricPoint.ts, MetricPoint.value)
            .join(MetricSeries, MetricSeries.id == MetricPoint.series_id)
            .where(MetricPoint.resolution == resolution, MetricSeries.metric == "cpu_usage_ratio")
            .order_by(MetricPoint.ts)
        )
        return [(int(ts), v) for ts, v in s.execute(q)]


def test_rollup_averages_completed_buckets_once(db: Database) -> None:
    w = SeriesWriter(db, "n1", rollup_s=60)
    for i in range(18):  # every 10 s for three minutes: minute m has values 6m..6m+5
        w.write(snap(T0 + 10 * i, float(i)))
    assert len(points(db, 0)) == 18
    assert w.rollup(T0 + 150) == 4  # two complete minutes x two series; the third is still open
    assert points(db, 60) == [(int(T0 * 1000), 2.5), (int((T0 + 60) * 1000), 8.5)]
    assert w.rollup(T0 + 170) == 0  # nothing new is complete
    assert w.rollup(T0 + 180) == 2
    assert points(db, 60)[-1] == (int((T0 + 120) * 1000), 14.5)
    # a restarted writer resumes after the last rollup instead of duplicating it
    w2 = SeriesWriter(db, "n1", rollup_s=60)
    w2.write(snap(T0 + 185, 100.0))
    assert w2.rollup(T0 + 240) == 2
    assert points(db, 60)[-1] == (int((T0 + 180) * 1000), 100.0)


def test_rollups_are_per_node(db: Database) -> None:
    a, b = SeriesWriter(db, "a"), SeriesWriter(db, "b")
    a.write(snap(T0, 1.0, node="a"))
    b.write(snap(T0 + 1, 3.0, node="b"))
    assert a.rollup(T0 + 60) == 2 and b.rollup(T0 + 60) == 2


def test_retention_drops_old_points_then_empty_series(db: Database) -> None:
    w = SeriesWriter(db, "n1", rollup_s=60)
    w.write(snap(T0, 1.0, old=5.0))  # a finished job's series
    w.write(snap(T0 + 30, 3.0))
    w.rollup(T0 + 60)
    w.write(snap(T0 + 2 * DAY, 7.0))
    deleted = w.prune(T0 + 2 * DAY, raw_retention_s=DAY, rollup_retention_s=30 * DAY)
    assert deleted == 5  # three raw points of cpu0/node_up at T0, T0+30, and the job's
    assert points(db, 0) == [(int((T0 + 2 * DAY) * 1000), 7.0)]
    assert points(db, 60) == [(int(T0 * 1000), 2.0)]  # the minute survives its raw points
    w.prune(T0 + 31 * DAY, raw_retention_s=DAY, rollup_retention_s=30 * DAY)
    assert points(db, 60) == []
    with db.session() as s:
        assert (
            s.scalar(select(func.count()).select_from(MetricSeries).where(MetricSeries.metric == "job_loss"))
            == 0
        )
    w.write(snap(T0 + 31 * DAY, 1.0, again=2.0))  # the writer notices its series went away
    assert points(db, 0)[-1][1] == 1.0


def test_query_buckets_filters_and_hides_other_projects(db: Database) -> None:
    w = SeriesWriter(db, "n1")
    for i in range(6):
        w.write(snap(T0 + 10 * i, float(i), a=float(i), b=10.0 + i))
    start, end = int(T0 * 1000), int((T0 + 60) * 1000)
    with db.session() as s:
        got, more = tsdb.query(
            s, tsdb.series_filter(metric="cpu_*"), start_ms=start, end_ms=end, step_ms=30_000,
            resolution=0, max_series=10,
        )  # fmt: skip
        assert not more and [(g.resource, g.points) for g in got] == [("cpu0", [(T0, 1.0), (T0 + 30, 4.0)])]
        visible, _ = tsdb.query(
            s, tsdb.series_filter(level="task", projects=["prj_a"]), start_ms=start, end_ms=end,
            step_ms=10_000, resolution=0, max_series=10,
        )  # fmt: skip
        assert [(g.resource, g.project_id, len(g.points)) for g in visible] == [("job:a", "prj_a", 6)]
        everyone, more = tsdb.query(
            s, tsdb.series_filter(), start_ms=start, end_ms=end, step_ms=10_000, resolution=0, max_series=3
        )
        assert len(everyone) == 3 and more
        newest = tsdb.latest(s, tsdb.series_filter(resource="job:*", projects=[]), since_ms=0)
        assert newest == []  # task series need their project
        newest = tsdb.latest(s, tsdb.series_filter(node="n1"), since_ms=0)
        assert {(d.resource, d.points[0]) for d in newest} >= {
            ("job:b", (T0 + 50, 15.0)),
            ("cpu0", (T0 + 50, 5.0)),
        }
        assert tsdb.latest(s, tsdb.series_filter(), since_ms=int((T0 + 51) * 1000)) == []


def test_wildcards_do_not_treat_underscore_as_a_pattern(db: Database) -> None:
    w = SeriesWriter(db, "n1")
    w.write(Snapshot("n1", T0, [Sample(COMPONENT, "fs:/a_b", "fs_usage_ratio", 0.5),
                                 Sample(COMPONENT, "fs:/axb", "fs_usage_ratio", 0.6)]))  # fmt: skip
    with db.session() as s:
        got = tsdb.latest(s, tsdb.series_filter(resource="fs:/a_*"), since_ms=0)
    assert [d.resource for d in got] == ["fs:/a_b"]


def test_overlong_resources_are_cut_the_same_way_every_time(db: Database) -> None:
    long = Snapshot("n1", T0, [Sample(COMPONENT, "fs:/" + "x" * 300, "fs_usage_ratio", 0.5)])
    SeriesWriter(db, "n1").write(long)
    SeriesWriter(db, "n1").write(Snapshot("n1", T0 + 10, long.samples))  # a restart reloads the series
    with db.session() as s:
        [series] = tsdb.latest(s, tsdb.series_filter(metric="fs_usage_ratio"), since_ms=0)
    assert len(series.resource) == 255 and series.points == [(T0 + 10, 0.5)]

"""Time series in the metadata store: series (node, level, resource, metric) and their points.

Points are written raw (``resolution`` 0) at each collection pass; :meth:`SeriesWriter.rollup`
averages completed buckets of ``rollup_s`` seconds into rollup points, and :meth:`SeriesWriter.prune`
drops raw points after their retention (a day by default) and rollups after theirs (a month).
Timestamps are Unix milliseconds. The same SQL runs on SQLite and PostgreSQL (integer division
of two integers truncates on both).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import BigInteger, Select, and_, delete, exists, func, insert, literal_column, or_, select
from sqlalchemy.orm import Session

from onebox.monitor.samples import Sample, Snapshot
from onebox.store.db import Database
from onebox.store.tables import MetricPoint, MetricSeries

RAW = 0
"""The ``resolution`` of raw points."""


def to_ms(seconds: float) -> int:
    return round(seconds * 1000)


def _bucket(step_ms: int) -> Any:
    # a literal (not a bound parameter) so that PostgreSQL sees the same expression in SELECT
    # and GROUP BY; step_ms is always an int computed here, never user text
    step = literal_column(str(int(step_ms)), BigInteger)
    return (MetricPoint.ts // step) * step


def _key(smp: Sample) -> tuple[str, str, str]:
    return smp.level, smp.resource[:255], smp.metric


class SeriesWriter:
    """Writes one node's snapshots and keeps its rollups and retention (one per node)."""

    def __init__(self, db: Database, node: str, *, rollup_s: int = 60) -> None:
        self.db = db
        self.node = node
        self.rollup_ms = rollup_s * 1000
        self._ids: dict[tuple[str, str, str], int] | None = None
        self._last_ts = 0
        self._rolled_until: int | None = None

    # -- writing ----------------------------------------------------------------------------

    def _series_ids(self, s: Session, snapshot: Snapshot) -> dict[tuple[str, str, str], int]:
        if self._ids is None:
            rows = s.execute(
                select(MetricSeries.level, MetricSeries.resource, MetricSeries.metric, MetricSeries.id).where(
                    MetricSeries.node == self.node
                )
            )
            self._ids = {(lv, res, m): i for lv, res, m, i in rows}
        new = {}
        for smp in snapshot.samples:
            key = _key(smp)
            if key not in self._ids and key not in new:
                new[key] = MetricSeries(
                    node=self.node,
                    level=smp.level,
                    resource=key[1],
                    metric=smp.metric,
                    name=smp.name[:255],
                    project_id=smp.project_id,
                )
        if new:
            s.add_all(new.values())
            s.flush()
            self._ids.update({k: row.id for k, row in new.items()})
        return self._ids

    def write(self, snapshot: Snapshot) -> int:
        """Store the snapshot's samples as raw points; returns how many were written."""
        ts = max(to_ms(snapshot.ts), self._last_ts + 1)  # two passes in one ms stay distinct
        try:
            with self.db.session() as s:
                ids = self._series_ids(s, snapshot)
                rows = {}
                for smp in snapshot.samples:
                    if math.isfinite(smp.value):
                        sid = ids[_key(smp)]
                        rows[sid] = {"series_id": sid, "resolution": RAW, "ts": ts, "value": float(smp.value)}
                if rows:
                    s.execute(insert(MetricPoint), list(rows.values()))
        except Exception:
            self._ids = None  # ids cached in a rolled-back transaction (or taken by another writer)
            raise
        self._last_ts = ts
        return len(rows)

    # -- rollups and retention ----------------------------------------------------------------

    def _own(self) -> Any:
        return MetricPoint.series_id.in_(select(MetricSeries.id).where(MetricSeries.node == self.node))

    def _rollup_start(self, s: Session) -> int | None:
        last = s.scalar(
            select(func.max(MetricPoint.ts)).where(
                MetricPoint.resolution == self.rollup_ms // 1000, self._own()
            )
        )
        if last is not None:
            return int(last) + self.rollup_ms
        first = s.scalar(select(func.min(MetricPoint.ts)).where(MetricPoint.resolution == RAW, self._own()))
        return None if first is None else int(first) // self.rollup_ms * self.rollup_ms

    def rollup(self, now: float) -> int:
        """Average every completed bucket not rolled up yet; returns the rollup points written."""
        res = self.rollup_ms // 1000
        end = to_ms(now) // self.rollup_ms * self.rollup_ms  # the bucket holding ``now`` is open
        with self.db.session() as s:
            start = self._rolled_until if self._rolled_until is not None else self._rollup_start(s)
            if start is None or start >= end:
                return 0
            bucket = _bucket(self.rollup_ms)
            grouped = s.execute(
                select(MetricPoint.series_id, bucket, func.avg(MetricPoint.value))
                .where(
                    MetricPoint.resolution == RAW, MetricPoint.ts >= start, MetricPoint.ts < end, self._own()
                )
                .group_by(MetricPoint.series_id, bucket)
            ).all()
            rows = [
                {"series_id": sid, "resolution": res, "ts": int(ts), "value": float(v)}
                for sid, ts, v in grouped
            ]
            if rows:
                s.execute(insert(MetricPoint), rows)
        self._rolled_until = end
        return len(rows)

    def prune(self, now: float, *, raw_retention_s: int, rollup_retention_s: int) -> int:
        """Drop points past their retention and this node's series left without points."""
        now_ms = to_ms(now)
        with self.db.session() as s:
            n = 0
            for resolution, keep_s in ((RAW, raw_retention_s), (self.rollup_ms // 1000, rollup_retention_s)):
                r = s.execute(
                    delete(MetricPoint).where(
                        MetricPoint.resolution == resolution, MetricPoint.ts < now_ms - keep_s * 1000
                    )
                )
                n += int(r.rowcount or 0)  # type: ignore[attr-defined]
            s.execute(
                delete(MetricSeries).where(
                    MetricSeries.node == self.node,
                    ~exists().where(MetricPoint.series_id == MetricSeries.id),
                )
            )
        self._ids = None  # some may be gone: reload on the next write
        return n


# -- reading ----------------------------------------------------------------------------------


@dataclass
class SeriesData:
    id: int
    node: str
    level: str
    resource: str
    metric: str
    name: str
    project_id: str | None
    points: list[tuple[float, float]] = field(default_factory=list)
    """(Unix seconds, value), oldest first."""


def _like(pattern: str) -> str:
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%")


def _match(column: Any, pattern: str | None) -> Any:
    if pattern is None:
        return None
    if "*" in pattern:
        return column.like(_like(pattern), escape="\\")
    return column == pattern


def series_filter(
    *,
    level: str | None = None,
    node: str | None = None,
    resource: str | None = None,
    metric: str | None = None,
    projects: Collection[str] | None = None,
) -> list[Any]:
    """WHERE clauses on :class:`MetricSeries`; ``*`` in resource, metric or node is a wildcard.
    ``projects``: the projects whose task series are visible (None: every project)."""
    clauses = [
        c
        for c in (
            _match(MetricSeries.level, level),
            _match(MetricSeries.node, node),
            _match(MetricSeries.resource, resource),
            _match(MetricSeries.metric, metric),
        )
        if c is not None
    ]
    if projects is not None:
        clauses.append(or_(MetricSeries.project_id.is_(None), MetricSeries.project_id.in_(list(projects))))
    return clauses


def _series_select(clauses: list[Any]) -> Select[Any]:
    return (
        select(MetricSeries)
        .where(*clauses)
        .order_by(MetricSeries.level, MetricSeries.node, MetricSeries.resource, MetricSeries.metric)
    )


def _data(row: MetricSeries) -> SeriesData:
    return SeriesData(row.id, row.node, row.level, row.resource, row.metric, row.name, row.project_id)


def query(
    session: Session,
    clauses: list[Any],
    *,
    start_ms: int,
    end_ms: int,
    step_ms: int,
    resolution: int,
    max_series: int,
) -> tuple[list[SeriesData], bool]:
    """Points of matching series in ``[start_ms, end_ms)`` from ``resolution`` points, averaged in
    buckets of ``step_ms``. Returns the series (at most ``max_series``) and whether more matched."""
    rows = list(session.scalars(_series_select(clauses).limit(max_series + 1)))
    truncated = len(rows) > max_series
    series = {r.id: _data(r) for r in rows[:max_series]}
    if not series:
        return [], truncated
    bucket = _bucket(step_ms)
    points = session.execute(
        select(MetricPoint.series_id, bucket, func.avg(MetricPoint.value))
        .where(
            MetricPoint.series_id.in_(list(series)),
            MetricPoint.resolution == resolution,
            MetricPoint.ts >= start_ms,
            MetricPoint.ts < end_ms,
        )
        .group_by(MetricPoint.series_id, bucket)
        .order_by(MetricPoint.series_id, bucket)
    )
    for sid, ts, value in points:
        series[sid].points.append((int(ts) / 1000.0, float(value)))
    return list(series.values()), truncated


def latest(session: Session, clauses: list[Any], *, since_ms: int) -> list[SeriesData]:
    """The newest raw point of each matching series, if newer than ``since_ms``."""
    newest = (
        select(MetricPoint.series_id, func.max(MetricPoint.ts).label("ts"))
        .where(
            MetricPoint.resolution == RAW,
            MetricPoint.ts >= since_ms,
            # only the matching series' points: a topology asks since a job's start, hours ago
            MetricPoint.series_id.in_(select(MetricSeries.id).where(*clauses)),
        )
        .group_by(MetricPoint.series_id)
        .subquery()
    )
    rows = session.execute(
        select(MetricSeries, MetricPoint.ts, MetricPoint.value)
        .join(newest, newest.c.series_id == MetricSeries.id)
        .join(
            MetricPoint,
            and_(
                MetricPoint.series_id == newest.c.series_id,
                MetricPoint.resolution == RAW,
                MetricPoint.ts == newest.c.ts,
            ),
        )
        .where(*clauses)
        .order_by(MetricSeries.level, MetricSeries.node, MetricSeries.resource, MetricSeries.metric)
    )
    out = []
    for row, ts, value in rows:
        d = _data(row)
        d.points.append((int(ts) / 1000.0, float(value)))
        out.append(d)
    return out

"""Metrics: query the monitoring time series by level, node, resource, metric and time range;
the latest values and the nodes for dashboards (``onebox top``).

Hardware series (component, node, cluster) are visible to everyone who may read; task series
belong to a project and are visible in that project only. An administrator, or the operator at
the box's shell, may ask for every project's with ``all_projects``.
"""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from onebox.errors import ErrorList, InvalidInputError, PermissionDeniedError, Problem
from onebox.monitor import cluster, tsdb
from onebox.monitor.catalog import METRICS
from onebox.monitor.samples import LEVELS
from onebox.services.context import App
from onebox.services.projects import get_project
from onebox.store.tables import Project

MAX_POINTS = 720
"""Default resolution: at most this many buckets per series."""
MAX_QUERY_POINTS = 11_000
"""Most points per series an explicit ``step`` may ask for (Prometheus' own limit), so one query
cannot make the gateway build millions of points."""
MAX_SERIES_LIMIT = 1000
MAX_STEP_S = 366 * 86400
LATEST_TIME = 4102444800.0  # 2100-01-01: anything later (or before 1970) is a typo, not a time
RESOLUTIONS = ("auto", "raw", "rollup")
_RELATIVE = re.compile(r"^-?(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(value: str | float | None, now: float, field: str, default: float) -> float:
    """Unix seconds from ``now``, a relative ``-15m``/``2h``/``7d`` (ago), Unix seconds, or ISO 8601."""
    t = _parse_time(value, now, field, default)
    if not (math.isfinite(t) and 0 <= t <= LATEST_TIME):
        raise InvalidInputError(
            f"{field} is out of range",
            problems=[Problem(field, f"{value!r} is not between 1970 and 2100")],
        )
    return t


def _parse_time(value: str | float | None, now: float, field: str, default: float) -> float:
    if value is None or value == "":
        return default
    if isinstance(value, int | float):
        return float(value)
    text = value.strip().lower()
    if text == "now":
        return now
    m = _RELATIVE.match(text)
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInputError(
            f"cannot read {field} {value!r} as a time",
            problems=[
                Problem(
                    field, f"{value!r} is not a time", "use now, -15m, -2h, -7d, Unix seconds or ISO 8601"
                )
            ],
        ) from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def visible_projects(app: App, all_projects: bool) -> list[str] | None:
    """Project ids whose task series the caller sees (None: all)."""
    principal = app.principal
    if all_projects:
        if principal is not None and not principal.system_admin:
            raise PermissionDeniedError("only administrators may see every project's task metrics")
        return None
    with app.db.session() as s:
        return [get_project(s, app.settings.project).id]


def _validate(
    level: str | None, metric: str | None, resolution: str, step: float | None, max_series: int
) -> None:
    errors = ErrorList()
    if level is not None and level not in LEVELS:
        errors.add("level", f"{level!r} is not a level", f"use one of {', '.join(LEVELS)}")
    if metric is not None and "*" not in metric and metric not in METRICS:
        errors.add("metric", f"no metric {metric!r}", "use a name from `onebox metrics list` or a * pattern")
    if resolution not in RESOLUTIONS:
        errors.add(
            "resolution", f"{resolution!r} is not a resolution", f"use one of {', '.join(RESOLUTIONS)}"
        )
    if step is not None and not (math.isfinite(step) and 1 <= step <= MAX_STEP_S):
        errors.add("step", f"must be between 1 and {MAX_STEP_S} seconds")
    if not 1 <= max_series <= MAX_SERIES_LIMIT:
        errors.add("max_series", f"must be between 1 and {MAX_SERIES_LIMIT}")
    errors.raise_if_any("invalid metrics query", InvalidInputError)


def _project_names(app: App, ids: set[str]) -> dict[str, str]:
    if not ids:
        return {}
    with app.db.session() as s:
        return dict(s.execute(select(Project.id, Project.name).where(Project.id.in_(ids))).all())


def _series_dict(d: tsdb.SeriesData, names: dict[str, str]) -> dict[str, Any]:
    return {
        "level": d.level,
        "node": d.node,
        "resource": d.resource,
        "metric": d.metric,
        "name": d.name,
        "project": names.get(d.project_id, d.project_id) if d.project_id else None,
        "points": [[ts, value] for ts, value in d.points],
    }


def query(
    app: App,
    *,
    level: str | None = None,
    node: str | None = None,
    resource: str | None = None,
    metric: str | None = None,
    start: str | float | None = None,
    end: str | float | None = None,
    step: float | None = None,
    resolution: str = "auto",
    max_series: int = 100,
    all_projects: bool = False,
    now: float | None = None,
) -> dict[str, Any]:
    """Series matching the filters (``*`` wildcards in node, resource and metric) with their points
    in ``[start, end)``, averaged over ``step`` seconds. ``auto`` resolution reads raw points
    while the range is within their retention, rollups beyond."""
    _validate(level, metric, resolution, step, max_series)
    settings = app.settings
    now = time.time() if now is None else now
    t_end = parse_time(end, now, "end", now)
    t_start = parse_time(start, now, "start", t_end - 3600)
    if t_start >= t_end:
        raise InvalidInputError(
            "the time range is empty",
            problems=[Problem("start", "must be before end", "e.g. start=-1h end=now")],
        )
    if resolution == "auto":
        resolution = "raw" if t_start >= now - settings.monitor_raw_retention_s else "rollup"
    rollup_s = settings.monitor_rollup_s
    native = rollup_s if resolution == "rollup" else max(settings.monitor_interval_s, 1.0)
    span = t_end - t_start
    if step is not None and span / step > MAX_QUERY_POINTS:
        raise InvalidInputError(
            "the query asks for too many points per series",
            problems=[
                Problem(
                    "step",
                    f"{math.ceil(span / step)} points per series, over {MAX_QUERY_POINTS}",
                    f"use step >= {math.ceil(span / MAX_QUERY_POINTS)} or a shorter range",
                )
            ],
        )
    step_s = step if step is not None else max(native, math.ceil(span / MAX_POINTS))
    if resolution == "rollup":
        step_s = math.ceil(step_s / rollup_s) * rollup_s
    step_s = max(math.ceil(step_s), 1)
    projects = visible_projects(app, all_projects)
    clauses = tsdb.series_filter(level=level, node=node, resource=resource, metric=metric, projects=projects)
    with app.db.session() as s:
        series, truncated = tsdb.query(
            s,
            clauses,
            start_ms=tsdb.to_ms(t_start),
            end_ms=tsdb.to_ms(t_end),
            step_ms=step_s * 1000,
            resolution=tsdb.RAW if resolution == "raw" else rollup_s,
            max_series=max_series,
        )
    names = _project_names(app, {d.project_id for d in series if d.project_id})
    return {
        "start": _iso(t_start),
        "end": _iso(t_end),
        "step_s": step_s,
        "resolution": resolution,
        "truncated": truncated,
        "series": [_series_dict(d, names) for d in series],
    }


def latest(
    app: App,
    *,
    level: str | None = None,
    resource: str | None = None,
    metric: str | None = None,
    max_age_s: float | None = None,
    all_projects: bool = False,
    now: float | None = None,
) -> list[dict[str, Any]]:
    """The newest value of each matching series written in the last ``max_age_s`` seconds
    (default: three collection intervals)."""
    _validate(level, metric, "auto", None, 1)
    now = time.time() if now is None else now
    age = max_age_s if max_age_s is not None else 3 * max(app.settings.monitor_interval_s, 10.0)
    projects = visible_projects(app, all_projects)
    clauses = tsdb.series_filter(level=level, resource=resource, metric=metric, projects=projects)
    with app.db.session() as s:
        rows = tsdb.latest(s, clauses, since_ms=tsdb.to_ms(now - age))
    names = _project_names(app, {d.project_id for d in rows if d.project_id})
    out = []
    for d in rows:
        item = _series_dict(d, names)
        ts, value = item.pop("points")[0]
        out.append({**item, "ts": ts, "value": value})
    return out


def nodes(app: App, *, now: float | None = None) -> list[dict[str, Any]]:
    """Every node known to the store with its status (healthy, unhealthy or lost)."""
    return cluster.list_nodes(app.db, time.time() if now is None else now)


def catalog() -> list[dict[str, Any]]:
    """Every metric: name, levels, help."""
    return [{"metric": m, "levels": list(spec.levels), "help": spec.help} for m, spec in METRICS.items()]

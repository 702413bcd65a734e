"""The shipped Grafana dashboard asks only for metrics and labels that ``/metrics`` exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.metrics_core import Metric

from onebox.api.gateway_metrics import GatewayMetrics
from onebox.monitor.exposition import LABELS, exported_names

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "onebox.json"
NAME = re.compile(r"\b(onebox_[a-z0-9_]+)\b")
SELECTOR = re.compile(r"\b(onebox_[a-z0-9_]+)\{([^}]*)\}")
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}


def _gateway_series() -> dict[str, set[str]]:
    """Sample names of the gateway's own families -> their labels (plus ``le`` for buckets)."""
    out: dict[str, set[str]] = {}
    family: Metric
    metrics = GatewayMetrics()
    for family in metrics.registry.collect():
        collector = next(c for c in vars(metrics).values() if getattr(c, "_name", None) == family.name)
        labels = set(collector._labelnames)
        for suffix in SUFFIXES.get(family.type, ("",)):
            out[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return out


def _exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if isinstance(var.get("query"), dict):
            exprs.append(var["query"]["query"])
    return exprs


def test_every_expression_names_an_exported_metric_with_its_labels() -> None:
    gateway = _gateway_series()
    monitoring = {name: {*LABELS, "node"} for name in exported_names()}
    known = {**gateway, **monitoring}
    exprs = _exprs()
    assert len(exprs) > 50
    for expr in exprs:
        names = NAME.findall(expr)
        assert names, expr
        for name in names:
            assert name in known, f"{name} in {expr!r} is not exported by /metrics"
        for name, selector in SELECTOR.findall(expr):
            for matcher in filter(None, (m.strip() for m in selector.split(","))):
                label = re.split(r"=~|!=|!~|=", matcher)[0].strip()
                assert label in known[name], f"{name} has no label {label!r} ({expr!r})"


def test_the_dashboard_covers_every_level_and_every_catalog_metric() -> None:
    text = " ".join(_exprs())
    for level in ("component", "node", "cluster", "task"):
        assert f'level="{level}"' in text
    used = set(NAME.findall(text))
    missing = {n for n in exported_names() if n not in used}
    assert missing <= {"onebox_memory_available_bytes", "onebox_cpu_count", "onebox_load_average_1m",
                       "onebox_fs_total_bytes", "onebox_fs_used_bytes", "onebox_memory_total_bytes",
                       "onebox_node_heartbeat_timestamp_seconds", "onebox_node_uptime_seconds",
                       "onebox_gpu_count"}, missing  # fmt: skip

"""What the gateway knows of each deployment, as monitoring's :class:`DeploymentCounters`.

Requests, 5xx answers, time to first token and time per output token come from the gateway's own
Prometheus counters (labelled by model id); queue, running requests, KV-cache use and generated
tokens from each ready replica's ``/stats``; process ids from the supervisor. A model id served in
two projects cannot be told apart in the gateway's counters, so those deployments get no request
figures rather than wrong ones.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from onebox.api.gateway_metrics import GatewayMetrics
from onebox.monitor.tasks import DeploymentCounters
from onebox.serve.supervisor import Supervisor


def _samples(metric: Any, suffix: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for family in metric.collect():
        for s in family.samples:
            if s.name.endswith(suffix):
                out.append((s.labels, float(s.value)))
    return out


def _by_model(metric: Any, suffix: str, keep: Any = None) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for labels, value in _samples(metric, suffix):
        if keep is None or keep(labels):
            totals[labels.get("model", "")] += value
    return totals


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def deployment_counters(
    supervisor: Supervisor, metrics: GatewayMetrics, stats: list[tuple[Any, dict[str, Any]]]
) -> list[DeploymentCounters]:
    """One :class:`DeploymentCounters` per deployment the supervisor runs."""
    owners: dict[str, set[str]] = defaultdict(set)  # model id -> deployment ids serving it
    for route in supervisor.routes.values():
        owners[route.model_id].add(route.deployment_id)
    models_of: dict[str, list[str]] = defaultdict(list)
    ambiguous: set[str] = set()
    for model_id, deps in owners.items():
        for dep in deps:
            models_of[dep].append(model_id)
            if len(deps) > 1:
                ambiguous.add(dep)
    finished = _by_model(metrics.requests, "_total")
    errors = _by_model(metrics.requests, "_total", lambda labels: labels.get("status", "").startswith("5"))
    ttft_sum, ttft_count = _by_model(metrics.ttft, "_sum"), _by_model(metrics.ttft, "_count")
    tpot_sum, tpot_count = _by_model(metrics.tpot, "_sum"), _by_model(metrics.tpot, "_count")
    stats_of: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for replica, s in stats:
        stats_of[replica.deployment_id].append(s)
    out = []
    for spec in supervisor.specs.values():
        replicas = supervisor.replicas_of(spec.id)
        c = DeploymentCounters(id=spec.id, name=spec.name, project_id=spec.project_id)
        c.replicas_ready = sum(r.state == "ready" for r in replicas)
        c.pids = [r.pid for r in replicas if r.pid is not None and r.state != "stopping"]
        if spec.id not in ambiguous:
            models = models_of.get(spec.id, [])
            c.requests = sum(finished.get(m, 0.0) for m in models)
            c.errors = sum(errors.get(m, 0.0) for m in models)
            c.ttft_sum = sum(ttft_sum.get(m, 0.0) for m in models)
            c.ttft_count = sum(ttft_count.get(m, 0.0) for m in models)
            c.tpot_sum = sum(tpot_sum.get(m, 0.0) for m in models)
            c.tpot_count = sum(tpot_count.get(m, 0.0) for m in models)
        kv = []
        for s in stats_of.get(spec.id, []):
            c.running += _number(s.get("running")) or 0.0
            c.waiting += _number(s.get("waiting")) or 0.0
            c.output_tokens += _number(s.get("generation_tokens_total")) or 0.0
            if (v := _number(s.get("kv_usage"))) is not None:
                kv.append(v)
        c.kv_usage = sum(kv) / len(kv) if kv else None
        out.append(c)
    return out

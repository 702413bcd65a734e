"""The gateway's view of each deployment, handed to the monitor."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onebox.api.deployment_counters import deployment_counters
from onebox.api.gateway_metrics import GatewayMetrics
from onebox.serve.supervisor import Replica, Route


@dataclass
class Spec:
    id: str
    name: str
    project_id: str


@dataclass
class FakeSupervisor:
    specs: dict[str, Spec]
    routes: dict[tuple[str, str], Route]
    replicas: list[Replica] = field(default_factory=list)

    def replicas_of(self, deployment_id: str) -> list[Replica]:
        return [r for r in self.replicas if r.deployment_id == deployment_id]


class Proc:
    def __init__(self, pid: int) -> None:
        self.pid = pid


def test_counters_by_deployment_and_ambiguous_model_ids() -> None:
    specs = {
        d: Spec(d, n, p) for d, n, p in (("d1", "chat", "p1"), ("d2", "shared", "p1"), ("d3", "shared", "p2"))
    }
    routes = {
        ("p1", "chat"): Route("d1", "chat", "chat", False, "p1"),
        ("p1", "chat-lora"): Route("d1", "chat", "chat-lora", True, "p1"),
        ("p1", "shared"): Route("d2", "shared", "shared", False, "p1"),
        ("p2", "shared"): Route("d3", "shared", "shared", False, "p2"),
    }
    r0 = Replica("d1", "chat", 0, Path("x"), state="ready", proc=Proc(101))  # type: ignore[arg-type]
    r1 = Replica("d1", "chat", 1, Path("y"), state="starting", proc=Proc(102))  # type: ignore[arg-type]
    sup = FakeSupervisor(specs, routes, [r0, r1])
    m = GatewayMetrics()
    m.requests.labels("chat", "chat.completions", "200").inc(7)
    m.requests.labels("chat-lora", "chat.completions", "503").inc(2)
    m.requests.labels("shared", "completions", "200").inc(5)
    m.ttft.labels("chat").observe(0.2)
    m.ttft.labels("chat-lora").observe(0.4)
    stats: list[tuple[Any, dict[str, Any]]] = [
        (r0, {"running": 2, "waiting": 1, "kv_usage": 0.5, "generation_tokens_total": 900})
    ]
    got = {c.id: c for c in deployment_counters(sup, m, stats)}  # type: ignore[arg-type]
    d1 = got["d1"]
    assert (d1.requests, d1.errors) == (9, 2)  # base model and adapter together
    assert d1.ttft_count == 2 and abs((d1.ttft_sum or 0) - 0.6) < 1e-9
    assert (d1.running, d1.waiting, d1.kv_usage, d1.output_tokens) == (2, 1, 0.5, 900)
    assert d1.replicas_ready == 1 and d1.pids == [101, 102]
    assert got["d2"].requests is None and got["d3"].requests is None  # "shared" in two projects
    assert got["d2"].kv_usage is None

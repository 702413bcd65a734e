"""Faults injected into real processes and readings, seen by the monitor as the right alerts:
a job worker that stops progressing (and one frozen with SIGSTOP, then SIGKILLed), a job whose
loss becomes NaN, a full disk, a SIGKILLed deployment worker, hot and throttled GPUs with ECC
errors, a deployment failing and slow, and a diverging loss. Every wait is bounded."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections import namedtuple
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import update

from onebox.config import Settings
from onebox.monitor.alerts import AlertEngine
from onebox.monitor.host import HostCollector
from onebox.monitor.loop import Monitor, MonitorConfig
from onebox.monitor.nvml import GpuCollector
from onebox.monitor.rules import RuleSet, load_rules
from onebox.monitor.tasks import DeploymentCounters
from onebox.serve.supervisor import Supervisor
from onebox.services import deployments, events, jobs, models
from onebox.services.context import App, open_app
from onebox.services.deployments import DeploymentSpec
from onebox.store.tables import Job
from tests.jobs.helpers import MakeExecutor, drive_until, executor_factory, job_row, submit_sleep
from tests.monitor.fakes import FakeNvml
from tests.monitor.helpers import project_id, running_job

T0 = 1_800_000_000.0
STANDIN = Path(__file__).parents[1] / "serve" / "standin_worker.py"


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def make_executor(sqlite_app: App) -> Iterator[MakeExecutor]:
    yield from executor_factory(sqlite_app)


def alerts(app: App, rule: str, state: str = "all", resource: str | None = None) -> list[dict]:
    rows = events.list_events(app, state=state, alerts_only=True, resource=resource, all_projects=True)
    return [r for r in rows if r["rule"] == rule]


def monitor(app: App, tmp_path: Path, rules: str | None = None, **kw: Any) -> Monitor:
    """This box's monitor with the shipped rules, or with only the rules named in ``rules`` (a
    YAML text; the shipped ones would also judge this test machine's real state)."""
    if rules is None:
        return Monitor(app.db, MonitorConfig(node_name="box", alerts=True), open_gpus=False, **kw)
    path = tmp_path / "rules.yaml"
    path.write_text(rules, encoding="utf-8")
    names = {r["name"] for r in yaml.safe_load(rules)["rules"]}
    loaded = load_rules(path)
    engine = AlertEngine(app.db, "box", RuleSet(tuple(r for r in loaded.rules if r.name in names)))
    return Monitor(app.db, MonitorConfig(node_name="box"), open_gpus=False, alerts=engine, **kw)


def step_until(
    mon: Monitor,
    predicate: Callable[[], bool],
    timeout: float = 20.0,
    tick: Callable[[], object] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if tick is not None:
            tick()
        mon.step()
        if predicate():
            return
        assert time.monotonic() < deadline, "alert not seen in time"
        time.sleep(0.1)


def test_job_worker_stalls_freezes_and_is_killed(
    sqlite_app: App, make_executor: MakeExecutor, tmp_path: Path
) -> None:
    mon = monitor(
        sqlite_app,
        tmp_path,
        """
rules:
  - name: job_stalled
    threshold: 1.5
  - name: job_heartbeat_lost
    threshold: 2
  - name: worker_oom_killed
""",
    )
    job = submit_sleep(sqlite_app, steps=3, sleep=60)  # the first step never ends in this test
    ex = make_executor(heartbeat_interval=0.2)
    drive_until(ex, lambda: job_row(sqlite_app, job.id).pid is not None)
    pid = job_row(sqlite_app, job.id).pid
    assert pid is not None
    res = f"job:{job.id}"
    try:
        # 1. alive and beating, but its step does not advance
        step_until(mon, lambda: bool(alerts(sqlite_app, "job_stalled", "firing")), tick=ex.tick)
        [stalled] = alerts(sqlite_app, "job_stalled")
        assert stalled["resource_type"] == "job" and stalled["resource_id"] == job.id
        assert stalled["project"] == "default" and "has made no progress" in stalled["message"]
        assert not alerts(sqlite_app, "job_heartbeat_lost")  # its heartbeat is fresh
        # 2. frozen: no heartbeat any more
        os.kill(pid, signal.SIGSTOP)
        try:
            step_until(mon, lambda: bool(alerts(sqlite_app, "job_heartbeat_lost", "firing")))
        finally:
            os.kill(pid, signal.SIGCONT)
        [lost] = alerts(sqlite_app, "job_heartbeat_lost")
        assert "has not reported for" in lost["message"] and lost["severity"] == "error"
        step_until(mon, lambda: bool(alerts(sqlite_app, "job_heartbeat_lost", "resolved")), tick=ex.tick)
        # 3. killed by SIGKILL, which onebox did not send: the OOM killer's signature
        os.kill(pid, signal.SIGKILL)
        drive_until(ex, lambda: job_row(sqlite_app, job.id).pid not in (None, pid))  # re-queued, restarted
        step_until(mon, lambda: bool(alerts(sqlite_app, "worker_oom_killed", "firing")))
        [oom] = alerts(sqlite_app, "worker_oom_killed")
        assert oom["resource"] == res and "killed by SIGKILL, which onebox did not send" in oom["message"]
        # the alerts are among the job's own events
        kinds = [e["kind"] for e in jobs.show(sqlite_app, job.id)["events"]]
        assert "job.requeued" in kinds and "alert.firing.worker_oom_killed" in kinds
        assert "alert.resolved.job_heartbeat_lost" in kinds
    finally:
        jobs.cancel(sqlite_app, job.id, force=True)
        drive_until(ex, lambda: ex.is_finished(job.id), timeout=30)
    # the job is gone: its stalled alert resolves
    step_until(mon, lambda: bool(alerts(sqlite_app, "job_stalled", "resolved")))
    assert "no longer reports" in alerts(sqlite_app, "job_stalled")[0]["resolution"]
    mon.close()


def test_a_job_whose_loss_becomes_nan(sqlite_app: App, make_executor: MakeExecutor, tmp_path: Path) -> None:
    mon = monitor(sqlite_app, tmp_path, "rules:\n  - name: job_loss_nan\n  - name: worker_crashed\n")
    job = submit_sleep(sqlite_app, steps=5, sleep=0.05, nan_at_step=2)
    ex = make_executor()
    drive_until(ex, lambda: ex.is_finished(job.id))
    assert job_row(sqlite_app, job.id).status == "failed"  # it failed between two passes
    mon.step()
    [nan] = alerts(sqlite_app, "job_loss_nan", "firing")
    assert nan["resource_id"] == job.id and nan["severity"] == "error"
    assert nan["message"].endswith("loss is not finite at step 2")
    assert not alerts(sqlite_app, "worker_crashed")  # it failed cleanly: not a crash
    # a running job reporting a NaN loss right now (stored as null) is seen too
    other = running_job(sqlite_app, loss=None)
    mon.step()
    assert alerts(sqlite_app, "job_loss_nan", "firing", resource=f"job:{other}")
    assert (
        "the latest loss is not finite"
        in alerts(sqlite_app, "job_loss_nan", resource=f"job:{other}")[0]["message"]
    )
    mon.close()


def test_disk_full_from_an_injected_reading(
    sqlite_app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    usage = namedtuple("usage", "total used free percent")
    full = {"ratio": 0.97}
    real = __import__("psutil").disk_usage

    def disk_usage(path: str) -> object:
        if path != str(tmp_path):
            return real(path)
        used = int(100e9 * full["ratio"])
        return usage(100 * 10**9, used, 100 * 10**9 - used, full["ratio"] * 100)

    monkeypatch.setattr("onebox.monitor.host.psutil.disk_usage", disk_usage)
    clock = Clock(T0)
    mon = monitor(sqlite_app, tmp_path, clock=clock)  # the shipped rules, as `onebox serve` runs them
    mon.host = HostCollector(mountpoints=[str(tmp_path)])
    for t in (0, 60):
        clock.t = T0 + t
        mon.step()
        assert not alerts(sqlite_app, "disk_full")  # for: 2m
    clock.t = T0 + 120
    mon.step()
    [fired] = alerts(sqlite_app, "disk_full", "firing")
    assert fired["resource"] == f"fs:{tmp_path}" and fired["node"] == "box" and fired["level"] == "component"
    assert f"file system fs:{tmp_path} on box is 97% full" in fired["message"]
    assert fired["project"] is None  # a node's event: not any project's
    full["ratio"] = 0.89  # in the hysteresis band: still firing
    clock.t = T0 + 130
    mon.step()
    assert alerts(sqlite_app, "disk_full", "firing")
    full["ratio"] = 0.5
    clock.t = T0 + 140
    mon.step()
    [resolved] = alerts(sqlite_app, "disk_full", "resolved")
    assert resolved["id"] == fired["id"] and resolved["resolution"] == "fs_usage_ratio is back to 0.5"
    mon.close()


def test_hot_throttled_gpus_and_ecc_errors(sqlite_app: App, tmp_path: Path) -> None:
    clock = Clock(T0)
    gpus = GpuCollector.open(FakeNvml())
    mon = Monitor(sqlite_app.db, MonitorConfig(node_name="box", alerts=True), gpus=gpus, clock=clock)
    mon.step()
    [ecc] = alerts(sqlite_app, "gpu_ecc_errors")  # at once: no duration on ECC errors
    assert ecc["resource"] == "gpu0" and "1 uncorrected ECC errors" in ecc["message"]
    assert not alerts(sqlite_app, "gpu_hot") and not alerts(sqlite_app, "gpu_throttled")
    clock.t = T0 + 120
    mon.step()
    [hot] = alerts(sqlite_app, "gpu_hot")
    [throttled] = alerts(sqlite_app, "gpu_throttled")
    assert hot["resource"] == throttled["resource"] == "gpu1" and "94 °C" in hot["message"]
    assert "NVIDIA H100" in hot["message"]
    mon.close()


def test_deployment_errors_and_latency_above_target(sqlite_app: App, tmp_path: Path) -> None:
    clock = Clock(T0)
    mon = Monitor(sqlite_app.db, MonitorConfig(node_name="box", alerts=True), open_gpus=False, clock=clock)
    pid = project_id(sqlite_app, "default")
    for i in range(8):  # a minute apart: 10% of requests fail, 3 s to the first token
        clock.t = T0 + 60 * i
        counters = DeploymentCounters(
            "dep_1", "chat", pid, requests=100.0 * i, errors=10.0 * i,
            ttft_sum=3.0 * 10 * i, ttft_count=10.0 * i, tpot_sum=0.05 * 10 * i, tpot_count=10.0 * i,
        )  # fmt: skip
        mon.step([counters])
    [errors] = alerts(sqlite_app, "deployment_error_rate")
    assert errors["resource"] == "deployment:dep_1" and errors["project"] == "default"
    assert errors["message"] == "deployment chat: 10% of requests fail (over 5% for 2m)"
    [ttft] = alerts(sqlite_app, "deployment_ttft_slow")
    assert "time to first token is 3.00 s" in ttft["message"]
    assert not alerts(sqlite_app, "deployment_tpot_slow")  # 50 ms per token is within target
    mon.close()


def test_a_diverging_loss(sqlite_app: App, tmp_path: Path) -> None:
    clock = Clock(time.time())
    mon = monitor(sqlite_app, tmp_path, "rules:\n  - name: job_loss_diverging\n", clock=clock)
    job_id = running_job(sqlite_app, loss=2.0)
    for loss in (2.0, 1.0, 0.5, 0.6, 1.6, 1.7, 1.8):  # from 1.6 on: more than twice the minimum
        with sqlite_app.db.session() as s:
            s.execute(update(Job).where(Job.id == job_id).values(metrics={"loss": loss}))
        mon.step()
        clock.t += 60
    [fired] = alerts(sqlite_app, "job_loss_diverging", "firing")
    assert fired["resource_id"] == job_id and "its loss is 3.6x its minimum" in fired["message"]
    mon.close()


# -- a deployment worker killed with SIGKILL --------------------------------------------------


def standin_command(spec: DeploymentSpec, replica: int, port: int) -> list[str]:
    return [
        sys.executable,
        str(STANDIN),
        "--deployment",
        spec.id,
        "--replica",
        str(replica),
        "--port",
        str(port),
    ]


@pytest.fixture
def reg(tmp_path: Path, tiny_model_dir: Path) -> Iterator[App]:
    app = open_app(Settings(home=tmp_path / "home", node_name="box"))
    models.register(app, "tiny", str(tiny_model_dir))
    yield app
    app.close()


def test_a_killed_deployment_worker(reg: App, tmp_path: Path) -> None:
    dep = deployments.deploy(reg, "tiny")
    mon = Monitor(reg.db, MonitorConfig(node_name="box", alerts=True), open_gpus=False)

    async def scenario() -> None:
        sup = Supervisor(reg, poll_interval=0.05, worker_command=standin_command, stop_grace=3)
        await sup.start()
        try:
            deadline = time.monotonic() + 60
            while deployments.show(reg, "tiny")["status"] != "ready":
                assert time.monotonic() < deadline, "deployment not ready in time"
                await asyncio.sleep(0.05)
            await asyncio.to_thread(mon.step)
            [replica] = sup.replicas_of(dep["id"])
            assert replica.proc is not None
            os.kill(replica.proc.pid, signal.SIGKILL)  # what the kernel's OOM killer does
            while not [
                e
                for e in deployments.show(reg, "tiny")["events"]
                if e["kind"] == "deployment.replica_crashed"
            ]:
                assert time.monotonic() < deadline, "the supervisor did not record the crash"
                await asyncio.sleep(0.05)
            await asyncio.to_thread(mon.step)
        finally:
            await sup.stop()

    asyncio.run(asyncio.wait_for(scenario(), 120))
    [oom] = alerts(reg, "worker_oom_killed", "firing")
    assert oom["resource_type"] == "deployment" and oom["resource_id"] == dep["id"]
    assert oom["name"] == "tiny" and oom["project"] == "default" and oom["severity"] == "error"
    assert "killed by SIGKILL" in oom["message"]
    assert not alerts(reg, "worker_crashed")
    # it is among the deployment's events, visible to its project
    kinds = [e["kind"] for e in events.list_events(reg, resource=f"deployment:{dep['id']}")]
    assert "alert.firing.worker_oom_killed" in kinds and "deployment.replica_crashed" in kinds
    mon.close()

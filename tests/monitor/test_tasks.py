"""Task level: running jobs from what they report, deployments from gateway counters, processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from onebox.monitor.processes import ProcessMeter
from onebox.monitor.samples import TASK
from onebox.monitor.tasks import DeploymentCounters, TaskCollector
from onebox.services.context import App
from tests.monitor.helpers import project_id, running_job


def _by(samples, resource):
    return {s.metric: s.value for s in samples if s.resource == resource}


def test_running_jobs_report_training_metrics_and_process_usage(sqlite_app: App) -> None:
    job = running_job(
        sqlite_app, loss=1.25, lr=2e-4, grad_norm=0.8, tokens_per_s=950.0, step_time=0.5, done=30, total=120,
        eta_s=45.0, epoch=1.0,
    )  # fmt: skip
    tasks = TaskCollector(sqlite_app.db, socket.gethostname())
    first = tasks.collect(time.time(), gpu_memory={os.getpid(): 123})
    busy_until = time.process_time() + 0.05  # CPU time moves in 10 ms ticks
    while time.process_time() < busy_until:
        pass
    second = tasks.collect(time.time(), gpu_memory={os.getpid(): 123})
    got = _by(second, f"job:{job}")
    assert got["job_loss"] == 1.25 and got["job_learning_rate"] == 2e-4 and got["job_grad_norm"] == 0.8
    assert got["job_tokens_per_second"] == 950 and got["job_step_time_seconds"] == 0.5
    assert got["job_step"] == 30 and got["job_eta_seconds"] == 45 and got["job_progress_ratio"] == 0.25
    assert 0 <= got["job_heartbeat_age_seconds"] < 60
    assert got["task_processes"] >= 1 and got["task_memory_rss_bytes"] > 10 * 2**20
    assert got["task_gpu_memory_bytes"] == 123
    assert "task_cpu_cores" not in _by(first, f"job:{job}") and got["task_cpu_cores"] > 0
    s = next(x for x in second if x.metric == "job_loss")
    assert s.level == TASK and s.project == "default" and s.project_id == project_id(sqlite_app, "default")
    assert tasks.jobs_running == 1


def test_jobs_on_other_hosts_get_no_process_samples(sqlite_app: App) -> None:
    job = running_job(sqlite_app, loss=2.0)
    got = _by(TaskCollector(sqlite_app.db, "another-host").collect(time.time()), f"job:{job}")
    assert got["job_loss"] == 2.0 and "task_processes" not in got


def test_deployment_rates_and_means_between_passes(sqlite_app: App) -> None:
    tasks = TaskCollector(sqlite_app.db, socket.gethostname())
    d = DeploymentCounters(
        id="dep_1", name="chat", project_id=project_id(sqlite_app, "x"), requests=10, errors=1, ttft_sum=2.0,
        ttft_count=10, tpot_sum=0.5, tpot_count=10, output_tokens=1000, running=2, waiting=3, kv_usage=0.4,
        replicas_ready=1, pids=[os.getpid()],
    )  # fmt: skip
    first = _by(tasks.collect(100.0, [d]), "deployment:dep_1")
    assert first["deployment_queue"] == 3 and first["deployment_kv_usage_ratio"] == 0.4
    assert "deployment_requests_per_second" not in first  # a rate needs two passes
    d.requests, d.errors, d.output_tokens = 30, 3, 3000
    d.ttft_sum, d.ttft_count, d.tpot_sum, d.tpot_count = 8.0, 30, 1.5, 30
    got = _by(tasks.collect(110.0, [d]), "deployment:dep_1")
    assert got["deployment_requests_per_second"] == pytest.approx(2.0)
    assert got["deployment_errors_per_second"] == pytest.approx(0.2)
    assert got["deployment_output_tokens_per_second"] == pytest.approx(200.0)
    assert got["deployment_time_to_first_token_seconds"] == pytest.approx(0.3)  # 6 s over 20 requests
    assert got["deployment_time_per_output_token_seconds"] == pytest.approx(0.05)
    assert got["task_processes"] >= 1 and tasks.deployments == 1
    assert {s.project for s in tasks.collect(120.0, [d])} == {"x"}


def test_unattributable_gateway_counters_give_no_rates(sqlite_app: App) -> None:
    tasks = TaskCollector(sqlite_app.db, socket.gethostname())
    d = DeploymentCounters(id="dep_2", name="chat", project_id="prj_y", output_tokens=5.0, running=1)
    tasks.collect(1.0, [d])
    d.output_tokens = 25.0
    got = _by(tasks.collect(2.0, [d]), "deployment:dep_2")
    assert got["deployment_output_tokens_per_second"] == 20.0 and got["deployment_running"] == 1
    assert "deployment_requests_per_second" not in got and "deployment_time_to_first_token_seconds" not in got


def test_process_meter_follows_children() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: sum(range(10000))"])
    try:
        meter = ProcessMeter()
        t0 = time.time()
        meter.measure([os.getpid()], t0)
        time.sleep(0.5)
        usage = meter.measure([os.getpid()], time.time())
        assert usage.processes >= 2 and usage.cpu_cores is not None and usage.cpu_cores > 0.05
        assert meter.measure([999_999_999], time.time()).processes == 0  # gone pids are skipped
    finally:
        child.kill()
        child.wait()


def test_a_pid_reused_after_the_worker_died_lends_the_job_nothing(sqlite_app: App) -> None:
    """A process started long after the job did holds the job's old pid: not the worker."""
    from datetime import UTC, datetime, timedelta

    from onebox.store.tables import Job

    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        job = running_job(sqlite_app, pid=stranger.pid, loss=1.0)
        with sqlite_app.db.session() as s:
            s.get(Job, job).started_at = datetime.now(UTC) - timedelta(hours=1)
        got = _by(TaskCollector(sqlite_app.db, socket.gethostname()).collect(time.time()), f"job:{job}")
        assert got["job_loss"] == 1.0 and "task_processes" not in got
    finally:
        stranger.kill()
        stranger.wait(timeout=10)

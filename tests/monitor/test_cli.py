"""``onebox top`` rendered in rich's test console, and ``onebox metrics`` as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from onebox.cli.metric_format import fmt, sparkline
from onebox.cli.top import Gatherer, render
from onebox.config import Settings
from onebox.monitor.loop import Monitor, MonitorConfig
from onebox.monitor.nvml import GpuCollector
from onebox.monitor.tasks import DeploymentCounters
from onebox.services.context import App, open_app
from tests.monitor.fakes import FakeNvml
from tests.monitor.helpers import project_id, running_job


def _screen(app: App, width: int = 220) -> tuple[str, str]:
    gather = Gatherer(app)
    data = gather()
    console = Console(record=True, width=width, color_system=None)
    console.print(render(data))
    gather.close()
    return data.source, console.export_text()


def test_top_shows_nodes_devices_jobs_and_deployments(sqlite_app: App) -> None:
    job = running_job(sqlite_app, loss=1.234, lr=3e-4, tokens_per_s=812.0, done=40, eta_s=95.0)
    dep = DeploymentCounters(
        id="dep_x", name="support-bot", project_id=project_id(sqlite_app, "default"), requests=1.0, running=2,
        waiting=1, kv_usage=0.25, replicas_ready=1,
    )  # fmt: skip
    mon = Monitor(sqlite_app.db, MonitorConfig(node_name="rack-7"), gpus=GpuCollector.open(FakeNvml()))
    mon.step([dep])
    mon.step([dep])
    source, text = _screen(sqlite_app)
    assert source == "store"
    assert "onebox top" in text and "1/1 nodes up, 1 jobs running, 1 deployments" in text
    expected = [
        *("Nodes", "rack-7", "unhealthy", "gpu1 is at 94 °C", "Devices", "gpu0", "NVIDIA H100"),
        *("20.0 GiB / 80.0 GiB", "94 °C", "throttled", "cpu0-", "fs:/", "Jobs", "train-default", job[4:]),
        *("1.234", "3.00e-04", "812.0/s", "95.0 s", "Deployments", "support-bot", "25%"),
    ]
    for item in expected:
        assert item in text, item
    mon.close()


def test_top_collects_itself_when_nothing_is_stored(sqlite_app: App) -> None:
    source, text = _screen(sqlite_app, width=160)
    assert source == "local" and "collected here" in text and "cpu0-" in text
    assert "no running jobs" in text and "no deployments served" in text


def test_units_and_sparklines() -> None:
    assert fmt("memory_used_bytes", 3 * 2**30) == "3.0 GiB" and fmt("cpu_usage_ratio", 0.5) == "50.0%"
    assert fmt("deployment_time_to_first_token_seconds", 0.0421) == "42.1 ms"
    assert (
        fmt("net_receive_bytes_per_second", 2048) == "2.0 KiB/s"
        and fmt("gpu_sm_clock_hertz", 1.98e9) == "1980 MHz"
    )
    assert fmt("job_step", 1200.0) == "1,200" and fmt("job_loss", None) == "-"
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█" and sparkline([2, 2]) == "▁▁"


def test_metrics_commands(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", node_name="cli-node")
    app = open_app(settings)
    Monitor(app.db, MonitorConfig.from_settings(settings), open_gpus=False).step()
    app.close()
    env = {**os.environ, "ONEBOX_HOME": str(settings.home), "ONEBOX_NODE_NAME": "cli-node", "COLUMNS": "200"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "onebox", *args], env=env, capture_output=True, text=True, timeout=120
        )

    res = run("metrics", "query", "memory_total_bytes", "--level", "node", "--start", "-10m", "--json")
    assert res.returncode == 0, res.stderr
    [series] = json.loads(res.stdout)["series"]
    assert series["node"] == "cli-node" and series["points"][0][1] > 0
    table = run("metrics", "query", "-m", "fs_*", "--level", "component")
    assert table.returncode == 0 and "fs:/" in table.stdout and "fs_usage_ratio" in table.stdout

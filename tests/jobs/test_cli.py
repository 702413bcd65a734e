"""``onebox jobs ...`` as a user runs it (real processes, exit codes, JSON), and ``watch``."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from rich.console import Console

from onebox.cli.jobs import watch
from onebox.services.context import App
from tests.jobs.helpers import MakeExecutor, submit_sleep

ONEBOX = [sys.executable, "-m", "onebox"]


def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ONEBOX_HOME": str(home), "COLUMNS": "200"}
    env.pop("ONEBOX_DATABASE_URL", None)
    return subprocess.run([*ONEBOX, *args], env=env, capture_output=True, text=True, timeout=120)


def test_submit_run_list_show_logs(tmp_path: Path) -> None:
    home = tmp_path / "home"
    spec = '{"steps": 2, "sleep": 0.01}'
    res = run(home, "jobs", "submit", "sleep", "--spec", spec, "--name", "nap", "--json")
    assert res.returncode == 0, res.stderr
    job_id = json.loads(res.stdout)["id"]
    res = run(home, "jobs", "run", "--poll", "0.1")
    assert res.returncode == 0, res.stderr
    assert f"started {job_id}" in res.stderr and f"{job_id} succeeded" in res.stderr
    assert "queue is empty" in res.stderr
    res = run(home, "jobs", "show", job_id[4:12], "--json")
    info = json.loads(res.stdout)
    assert info["status"] == "succeeded" and info["result"]["steps"] == 2 and info["name"] == "nap"
    res = run(home, "jobs", "logs", job_id, "--tail", "1")
    assert res.returncode == 0 and "=== succeeded ===" in res.stdout
    res = run(home, "jobs", "list")
    assert res.returncode == 0 and job_id in res.stdout and "succeeded" in res.stdout


def test_bad_input_exit_codes(tmp_path: Path) -> None:
    home = tmp_path / "home"
    res = run(home, "jobs", "submit", "nope", "--json")
    assert res.returncode == 4 and json.loads(res.stdout)["error"]["code"] == "unknown_job_type"
    res = run(home, "jobs", "submit", "sleep", "--cpus", "100000")
    assert res.returncode == 4 and "could never start" in res.stderr
    res = run(home, "jobs", "submit", "sleep", "--spec", "{steps: 2}")
    assert res.returncode == 4 and "not JSON" in res.stderr
    res = run(home, "jobs", "show", "job_zzzz")
    assert res.returncode == 3 and "does not exist" in res.stderr


def test_state_conflicts_exit_5(tmp_path: Path) -> None:
    home = tmp_path / "home"
    job_id = json.loads(run(home, "jobs", "submit", "sleep", "--json").stdout)["id"]
    assert run(home, "jobs", "cancel", job_id).returncode == 0
    res = run(home, "jobs", "cancel", job_id)
    assert res.returncode == 5 and "already cancelled" in res.stderr
    res = run(home, "jobs", "resume", job_id)
    assert res.returncode == 5 and "no checkpoint" in res.stderr


def test_watch_drives_the_executor_until_the_job_ends(sqlite_app: App, make_executor: MakeExecutor) -> None:
    job = submit_sleep(sqlite_app, steps=4)
    buf = io.StringIO()
    info = watch(sqlite_app, job.id, make_executor(), poll=0.05, out=Console(file=buf, width=160))
    assert info["status"] == "succeeded" and info["metrics"]["done"] == 4
    assert f"{job.id} succeeded" in buf.getvalue()


def test_watch_only_watches_when_another_executor_runs_the_jobs(
    sqlite_app: App, make_executor: MakeExecutor
) -> None:
    job = submit_sleep(sqlite_app, steps=3)
    owner = make_executor()
    owner.start()
    runner = threading.Thread(target=owner.run_until, args=(lambda: owner.is_finished(job.id), 0.05, 30))
    runner.start()
    buf = io.StringIO()
    try:
        info = watch(sqlite_app, job.id, make_executor(), poll=0.05, out=Console(file=buf, width=160))
    finally:
        runner.join()
    assert info["status"] == "succeeded" and "watching only" in buf.getvalue()

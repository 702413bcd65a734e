"""The worker entrypoint and the job context: refusals, an in-process run, the context's writes,
and the rule that onebox.jobs does not import services, the CLI or web frameworks."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

from onebox.jobs import state
from onebox.jobs.context import JobContext
from onebox.jobs.resources import Resources
from onebox.jobs.worker import EXIT_NOT_RUNNABLE, EXIT_OK, run_job
from onebox.services import jobs
from onebox.services.context import App
from tests.jobs.helpers import job_row

WORKER = [sys.executable, "-m", "onebox.jobs.worker"]


def _env(app: App) -> dict[str, str]:
    return {**os.environ, "ONEBOX_HOME": str(app.settings.home), "ONEBOX_DATABASE_URL": app.settings.db_url}


def _worker(app: App, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*WORKER, *args], env=_env(app), capture_output=True, text=True, timeout=60)


def test_worker_refuses_what_it_cannot_run(sqlite_app: App) -> None:
    res = _worker(sqlite_app)
    assert res.returncode == EXIT_NOT_RUNNABLE and "usage" in res.stderr
    res = _worker(sqlite_app, "job_nope")
    assert res.returncode == EXIT_NOT_RUNNABLE and "job job_nope does not exist" in res.stderr
    job = jobs.submit(sqlite_app, "sleep", {})
    jobs.cancel(sqlite_app, job.id)
    res = _worker(sqlite_app, job.id)
    assert res.returncode == EXIT_NOT_RUNNABLE and "is cancelled; nothing to run" in res.stderr


def test_worker_started_by_hand_claims_a_queued_job(sqlite_app: App) -> None:
    job = jobs.submit(sqlite_app, "sleep", {"steps": 2, "sleep": 0.01})
    res = _worker(sqlite_app, job.id)
    assert res.returncode == EXIT_OK, res.stderr
    row = job_row(sqlite_app, job.id)
    assert row.status == state.SUCCEEDED and row.attempts == 1 and row.exit_code == 0


def test_run_job_in_process(sqlite_app: App) -> None:
    """Handlers can be debugged without a subprocess: run_job runs the job right here."""
    job = jobs.submit(sqlite_app, "sleep", {"steps": 3, "sleep": 0.01})
    assert run_job(sqlite_app.settings, job.id, heartbeat_s=0.05, install_signals=False) == EXIT_OK
    row = job_row(sqlite_app, job.id)
    assert row.status == state.SUCCEEDED and row.result["pid"] == os.getpid() and row.checkpoint_step == 3
    assert "=== succeeded ===" in jobs.logs(sqlite_app, job.id)
    marker = json.loads((state.work_dir(sqlite_app.settings, job.id) / state.CHECKPOINT_MARKER).read_text())
    assert marker["step"] == 3


def test_a_job_cancelled_before_its_worker_started_never_runs(sqlite_app: App) -> None:
    job = jobs.submit(sqlite_app, "sleep", {"steps": 3})
    with sqlite_app.db.session() as s:
        state.claim(s, job.id, "elsewhere")
    jobs.cancel(sqlite_app, job.id)  # cancelling: the flag is set, no worker yet
    assert run_job(sqlite_app.settings, job.id, install_signals=False) == EXIT_OK
    row = job_row(sqlite_app, job.id)
    assert row.status == state.CANCELLED and row.result == {}
    assert "cancelled before it started" in jobs.logs(sqlite_app, job.id)


def test_context_throttles_progress_and_batches_metrics(sqlite_app: App) -> None:
    job = jobs.submit(sqlite_app, "sleep", {})
    with sqlite_app.db.session() as s:
        state.claim(s, job.id, "here")
    ctx = JobContext(
        job_id=job.id,
        job_type="sleep",
        spec={},
        resources=Resources(),
        attempt=1,
        work_dir=state.work_dir(sqlite_app.settings, job.id),
        settings=sqlite_app.settings,
        log=logging.getLogger("test"),
        db=sqlite_app.db,
        progress_interval=3600,
    )
    ctx.progress(1, 10, loss=2.0)  # the first report is written at once
    ctx.progress(5, 10, loss=1.0, tokens_per_s=float("inf"))  # held back by the throttle
    ctx.log_metrics(5, {"loss": 1.0})
    row = job_row(sqlite_app, job.id)
    assert row.progress == 0.1 and row.metrics["done"] == 1 and row.metrics["loss"] == 2.0
    ctx.flush()
    row = job_row(sqlite_app, job.id)
    assert row.progress == 0.5 and row.metrics["tokens_per_s"] is None and "eta_s" in row.metrics
    assert [(m["step"], m["value"]) for m in jobs.metrics(sqlite_app, job.id)] == [(5, 1.0)]
    assert not ctx.should_stop()
    ctx.request_stop()
    assert ctx.should_stop()
    app = ctx.open_app()
    assert jobs.get(app, job.id).id == job.id
    ctx.close()


def test_jobs_package_imports_no_services_cli_or_web() -> None:
    code = textwrap.dedent(
        """
        import sys
        import onebox.jobs.builtin, onebox.jobs.context, onebox.jobs.executor
        import onebox.jobs.registry, onebox.jobs.worker
        bad = [m for m in sys.modules if m.startswith(("onebox.services", "onebox.cli", "fastapi", "typer"))]
        print(bad)
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr

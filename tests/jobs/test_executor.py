"""The local executor with real worker processes: success, priorities, capacity, cancel, crashes,
restarts of the control process, failures and retries."""

from __future__ import annotations

import os
import signal

import pytest

from onebox.errors import ExecutorBusyError
from onebox.jobs import state
from onebox.jobs.procs import worker_alive
from onebox.jobs.registry import HANDLERS, register_handler
from onebox.services import jobs
from onebox.services.context import App
from tests.jobs.helpers import MakeExecutor, drive_until, job_row, run_until_done, submit_sleep


def test_sleep_job_runs_to_success_in_its_own_process(sqlite_app: App, make_executor: MakeExecutor) -> None:
    job = submit_sleep(sqlite_app, steps=5)
    ex = make_executor()
    done = run_until_done(ex, job.id)
    assert done.status == state.SUCCEEDED and done.progress == 1.0 and done.error is None
    assert done.result["steps"] == 5 and done.result["resumed_from"] == 0
    assert done.result["pid"] != os.getpid() and done.exit_code == 0 and done.attempts == 1
    assert done.metrics["done"] == 5 and done.metrics["total"] == 5 and done.metrics["loss"] == 0.2
    assert done.checkpoint_step == 5
    points = jobs.metrics(sqlite_app, job.id, "loss")
    assert [p["step"] for p in points] == [1, 2, 3, 4, 5] and points[-1]["value"] == 0.2
    log = jobs.logs(sqlite_app, job.id)
    assert "step 5/5" in log and "=== succeeded ===" in log
    assert jobs.logs(sqlite_app, job.id, tail=1).count("\n") == 1
    kinds = [e["kind"] for e in jobs.show(sqlite_app, job.id)["events"]]
    assert kinds == ["job.submitted", "job.started", "job.succeeded"]
    assert ex.idle() and not ex.workers


def test_priority_first_and_never_more_than_fits(sqlite_app: App, make_executor: MakeExecutor) -> None:
    low = submit_sleep(sqlite_app, steps=3, name="low")
    mid = submit_sleep(sqlite_app, steps=3, name="mid", priority=5)
    high = submit_sleep(sqlite_app, steps=3, name="high", priority=10)
    ex = make_executor(cpus=1)
    most = 0

    def observe(_report: object) -> None:
        nonlocal most
        most = max(most, len(ex.workers))
        assert ex.used.cpus <= 1

    assert ex.run_until(ex.idle, poll=0.05, timeout=30, on_tick=observe)
    assert most == 1
    rows = [job_row(sqlite_app, j.id) for j in (high, mid, low)]
    assert all(r.status == state.SUCCEEDED for r in rows)
    # high ran first, then mid, then low, one after another (handler wall times, no overlap)
    assert rows[0].result["ended"] <= rows[1].result["started"]
    assert rows[1].result["ended"] <= rows[2].result["started"]
    assert rows[0].started_at < rows[1].started_at < rows[2].started_at


def test_strict_order_a_big_job_is_not_overtaken(sqlite_app: App, make_executor: MakeExecutor) -> None:
    first = submit_sleep(sqlite_app, steps=3, priority=2)
    big = submit_sleep(sqlite_app, steps=1, priority=1, resources={"cpus": 2})
    small = submit_sleep(sqlite_app, steps=1, priority=0)
    ex = make_executor(cpus=2)
    report = ex.tick()
    assert report.started == [first.id]  # big waits for room; small must not jump ahead of it
    assert ex.run_until(ex.idle, poll=0.05, timeout=30)
    big_row, small_row = job_row(sqlite_app, big.id), job_row(sqlite_app, small.id)
    assert big_row.result["ended"] <= small_row.result["started"]


def test_executor_fails_a_job_that_can_never_fit_it(sqlite_app: App, make_executor: MakeExecutor) -> None:
    job = submit_sleep(sqlite_app, steps=1, resources={"cpus": 2})  # fits the machine, not this executor
    ex = make_executor(cpus=1)
    report = ex.tick()
    assert report.finished == [(job.id, state.FAILED)] and not report.started
    row = job_row(sqlite_app, job.id)
    assert row.status == state.FAILED and "can never start on this executor" in row.error
    assert "asks for 2 CPUs" in row.error


def test_graceful_cancel(sqlite_app: App, make_executor: MakeExecutor) -> None:
    job = submit_sleep(sqlite_app, steps=400)
    ex = make_executor()
    drive_until(ex, lambda: (job_row(sqlite_app, job.id).checkpoint_step or 0) >= 2)
    assert jobs.cancel(sqlite_app, job.id).status == state.CANCELLING
    done = run_until_done(ex, job.id)
    assert done.status == state.CANCELLED and done.error is None and done.exit_code == 0
    assert done.result["stopped"] is True and done.result["steps"] < 400
    assert done.cancel_requested
    kinds = [e["kind"] for e in jobs.show(sqlite_app, job.id)["events"]]
    assert kinds[-2:] == ["job.cancel_requested", "job.cancelled"]
    assert "received SIGTERM" in jobs.logs(sqlite_app, job.id)


def test_forced_cancel_after_the_grace_period(sqlite_app: App, make_executor: MakeExecutor) -> None:
    job = submit_sleep(sqlite_app, steps=100000, ignore_stop=True)
    ex = make_executor(cancel_grace=0.5)
    drive_until(ex, lambda: (job_row(sqlite_app, job.id).checkpoint_step or 0) >= 1)
    pid = job_row(sqlite_app, job.id).pid
    jobs.cancel(sqlite_app, job.id)
    done = run_until_done(ex, job.id)
    assert done.status == state.CANCELLED and done.exit_code == -signal.SIGKILL
    assert not worker_alive(pid, job.id)
    messages = [e["message"] for e in jobs.show(sqlite_app, job.id)["events"]]
    assert any("cancel grace period" in m for m in messages)


def test_kill_9_requeues_and_resumes_from_checkpoint(sqlite_app: App, make_executor: MakeExecutor) -> None:
    job = submit_sleep(sqlite_app, steps=30)
    ex = make_executor()
    drive_until(ex, lambda: (job_row(sqlite_app, job.id).checkpoint_step or 0) >= 3)
    first_pid = job_row(sqlite_app, job.id).pid
    os.kill(first_pid, signal.SIGKILL)
    done = run_until_done(ex, job.id)
    assert done.status == state.SUCCEEDED and done.attempts == 2
    assert done.result["resumed_from"] >= 3 and done.result["pid"] != first_pid
    events = jobs.show(sqlite_app, job.id)["events"]
    requeued = [e for e in events if e["kind"] == "job.requeued"]
    assert len(requeued) == 1 and "SIGKILL" in requeued[0]["message"]
    attempts = {p["attempt"] for p in jobs.metrics(sqlite_app, job.id)}
    assert attempts == {1, 2}
    assert "resuming from checkpoint at step" in jobs.logs(sqlite_app, job.id)


def test_worker_deaths_use_up_max_attempts(sqlite_app: App, make_executor: MakeExecutor) -> None:
    # A silent worker (heartbeat every 60 s) is killed after a 1 s timeout, every attempt.
    job = submit_sleep(sqlite_app, steps=100000, max_attempts=2)
    ex = make_executor(heartbeat_interval=60, heartbeat_timeout=1.0)
    done = run_until_done(ex, job.id, timeout=30)
    assert done.status == state.FAILED and done.attempts == 2
    assert "no heartbeat" in done.error and "gave up after 2 attempts" in done.error


def test_restart_reattaches_to_a_live_worker(sqlite_app: App, make_executor: MakeExecutor) -> None:
    job = submit_sleep(sqlite_app, steps=30)
    first = make_executor()
    drive_until(first, lambda: (job_row(sqlite_app, job.id).checkpoint_step or 0) >= 1)
    pid = job_row(sqlite_app, job.id).pid
    first.close()  # the control process goes away; the worker does not
    assert worker_alive(pid, job.id)
    second = make_executor()
    report = second.tick()
    assert report.reattached == [job.id] and second.used.cpus == 1
    done = run_until_done(second, job.id)
    assert done.status == state.SUCCEEDED and done.attempts == 1 and done.result["pid"] == pid
    kinds = [e["kind"] for e in jobs.show(sqlite_app, job.id)["events"]]
    assert kinds == ["job.submitted", "job.started", "job.reattached", "job.succeeded"]


def test_restart_requeues_a_job_whose_worker_is_gone(sqlite_app: App, make_executor: MakeExecutor) -> None:
    job = submit_sleep(sqlite_app, steps=30)
    first = make_executor()
    drive_until(first, lambda: (job_row(sqlite_app, job.id).checkpoint_step or 0) >= 2)
    pid = job_row(sqlite_app, job.id).pid
    first.close()
    os.kill(pid, signal.SIGKILL)
    drive_until(None, lambda: not worker_alive(pid, job.id))
    second = make_executor()
    report = second.tick()
    assert (job.id, state.QUEUED) in report.finished and not report.reattached
    done = run_until_done(second, job.id)
    assert done.status == state.SUCCEEDED and done.attempts == 2 and done.result["resumed_from"] >= 2


def test_one_executor_per_home(sqlite_app: App, make_executor: MakeExecutor) -> None:
    make_executor().start()
    with pytest.raises(ExecutorBusyError, match="already running the jobs"):
        make_executor().start()


def test_handler_error_fails_the_job_and_retry_runs_it_again(
    sqlite_app: App, make_executor: MakeExecutor
) -> None:
    job = submit_sleep(sqlite_app, steps=4, fail_at_step=2, fail_times=1)
    ex = make_executor()
    failed = run_until_done(ex, job.id)
    assert failed.status == state.FAILED and failed.attempts == 1  # no automatic retry for errors
    assert failed.error == "sleep job told to fail at step 2" and failed.exit_code == 1
    assert "Traceback" in jobs.logs(sqlite_app, job.id)
    assert jobs.retry(sqlite_app, job.id).status == state.QUEUED
    done = run_until_done(ex, job.id)
    assert done.status == state.SUCCEEDED and done.error is None
    assert done.result["runs"] == 2 and done.result["resumed_from"] == 1  # the work dir was kept
    kinds = [e["kind"] for e in jobs.show(sqlite_app, job.id)["events"]]
    assert "job.retried" in kinds and kinds[-1] == "job.succeeded"


def test_unexpected_exception_and_nan(sqlite_app: App, make_executor: MakeExecutor) -> None:
    crash = submit_sleep(sqlite_app, steps=3, crash_at_step=1)
    nan = submit_sleep(sqlite_app, steps=3, nan_at_step=2)
    ex = make_executor()
    assert ex.run_until(ex.idle, poll=0.05, timeout=20)
    row = job_row(sqlite_app, crash.id)
    assert row.status == state.FAILED
    assert row.error == "RuntimeError: sleep job crashed at step 1 (traceback in the job log)"
    assert 'raise RuntimeError(f"sleep job crashed' in jobs.logs(sqlite_app, crash.id)
    row = job_row(sqlite_app, nan.id)
    assert row.status == state.FAILED and "loss became NaN at step 2" in row.error
    assert [p["value"] for p in jobs.metrics(sqlite_app, nan.id, "loss")] == [1.0, None]
    assert row.metrics["loss"] is None


def test_unknown_handler_fails_clearly_in_the_worker(sqlite_app: App, make_executor: MakeExecutor) -> None:
    register_handler("ghost", "onebox_no_such_module:run")
    try:
        job = jobs.submit(sqlite_app, "ghost", {})
    finally:
        del HANDLERS["ghost"]  # the worker runs the path stored with the job, not its own registry
    done = run_until_done(make_executor(), job.id)
    assert done.status == state.FAILED
    assert "is not installed: no module 'onebox_no_such_module'" in done.error


def test_bad_spec_is_reported_by_the_handler(sqlite_app: App, make_executor: MakeExecutor) -> None:
    job = jobs.submit(sqlite_app, "sleep", {"steps": "many", "colour": "red"})
    done = run_until_done(make_executor(), job.id)
    assert done.status == state.FAILED and done.error.startswith("invalid spec for a sleep job")
    assert "spec.colour: unknown option" in done.error and "spec.steps" in done.error

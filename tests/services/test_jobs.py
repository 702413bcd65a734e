"""The jobs service on SQLite and PostgreSQL: validation at submit, lookups, cancel, retry,
resume and their refusals, events, JSON output; and one real run on each database."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from onebox.errors import (
    InsufficientResourcesError,
    InvalidInputError,
    JobStateError,
    NoCheckpointError,
    NotFoundError,
    UnknownJobTypeError,
)
from onebox.jobs import state
from onebox.jobs.procs import hostname
from onebox.jobs.resources import Resources
from onebox.services import jobs
from onebox.services.context import App
from onebox.store.tables import Job
from tests.jobs.helpers import MakeExecutor, executor_factory, job_row, run_until_done

SMALL = Resources(cpus=2, gpus=0, memory_mb=1024)


@pytest.fixture
def make_any_executor(app: App) -> Iterator[MakeExecutor]:
    yield from executor_factory(app)


def _force(app: App, job_id: str, status: str, **values: object) -> None:
    """Move a job through the real transitions to ``status`` without running a worker."""
    with app.db.session() as s:
        assert state.claim(s, job_id, hostname()) is not None
        if status != state.RUNNING:
            state.finish(s, job_id, status, error="boom" if status == state.FAILED else None)
        row = s.get_one(Job, job_id)
        for k, v in values.items():
            setattr(row, k, v)


def test_submit_stores_a_queued_job_and_an_event(app: App) -> None:
    job = jobs.submit(app, "sleep", {"steps": 3, "说明": "中文"}, name="睡眠", priority=4, max_attempts=2)
    assert job.status == state.QUEUED and job.type == "sleep" and job.priority == 4
    assert job.handler == "onebox.jobs.builtin:sleep_job" and job.max_attempts == 2
    assert job.resources == {"cpus": 1.0, "gpus": 0, "memory_mb": 0}
    assert job.log_path.endswith(f"jobs/{job.id}/job.log")
    info = jobs.show(app, job.id)
    assert info["spec"]["说明"] == "中文" and info["name"] == "睡眠"
    assert [e["kind"] for e in info["events"]] == ["job.submitted"]
    json.dumps(info)  # plain JSON all the way down
    assert info["progress"] == 0.0 and info["metrics"] == {} and info["devices"] == []


def test_submit_refuses_bad_input_and_stores_nothing(app: App) -> None:
    with pytest.raises(UnknownJobTypeError, match="unknown job type 'nope'") as err:
        jobs.submit(app, "nope", {})
    assert "sleep" in str(err.value) and err.value.exit_code == 4
    with pytest.raises(InvalidInputError) as err:
        jobs.submit(app, "sleep", {"x": float("nan")}, priority="high", max_attempts=0)  # type: ignore[arg-type]
    fields = [p.field for p in err.value.problems]
    assert fields == ["spec", "priority", "max_attempts"]
    with pytest.raises(InvalidInputError, match="invalid resources") as err:
        jobs.submit(app, "sleep", {}, resources={"cpus": -1, "gpus": 1.5, "disk": 3})
    assert {p.field for p in err.value.problems} == {"resources.cpus", "resources.gpus", "resources.disk"}
    with pytest.raises(InvalidInputError, match="invalid name"):
        jobs.submit(app, "sleep", {}, name="a b")
    with pytest.raises(NotFoundError, match="model version mv_x does not exist"):
        jobs.submit(app, "sleep", {}, input_model_version_id="mv_x")
    assert jobs.list_jobs(app) == []


def test_resources_that_can_never_fit_are_refused(app: App) -> None:
    with pytest.raises(InsufficientResourcesError, match="could never start") as err:
        jobs.submit(app, "sleep", {}, resources={"cpus": 64, "gpus": 2}, capacity=SMALL)
    assert [p.field for p in err.value.problems] == ["resources.cpus", "resources.gpus"]
    assert "asks for 64 CPUs; the machine has 2" in str(err.value)
    with pytest.raises(InsufficientResourcesError, match="this machine has"):
        jobs.submit(app, "sleep", {}, resources={"cpus": 100000})  # the real machine
    assert jobs.list_jobs(app) == []


def test_get_by_id_or_prefix(app: App) -> None:
    a = jobs.submit(app, "sleep", {})
    b = jobs.submit(app, "sleep", {})
    assert jobs.get(app, a.id).id == a.id
    assert jobs.get(app, a.id[:14]).id == a.id or a.id[:14] == b.id[:14]
    assert jobs.get(app, a.id.removeprefix("job_")).id == a.id  # "job_" may be left out
    with pytest.raises(InvalidInputError, match="matches 2 or more jobs"):
        jobs.get(app, "job_")
    with pytest.raises(NotFoundError, match="does not exist"):
        jobs.get(app, "job_zzzz")
    with pytest.raises(NotFoundError):
        jobs.get(app, "%")  # LIKE wildcards are literal


def test_list_filters_by_status_and_type(app: App) -> None:
    a = jobs.submit(app, "sleep", {})
    b = jobs.submit(app, "sleep", {})
    jobs.cancel(app, a.id)
    assert [j.id for j in jobs.list_jobs(app)] == [b.id, a.id]
    assert [j.id for j in jobs.list_jobs(app, "cancelled")] == [a.id]
    assert [j.id for j in jobs.list_jobs(app, ["queued", "running"])] == [b.id]
    assert jobs.list_jobs(app, type="train") == []
    with pytest.raises(InvalidInputError, match="invalid status"):
        jobs.list_jobs(app, "done")


def test_cancel_queued_then_cancel_again_is_a_conflict(app: App) -> None:
    job = jobs.submit(app, "sleep", {})
    done = jobs.cancel(app, job.id)
    assert done.status == state.CANCELLED and done.cancel_requested and done.finished_at is not None
    with pytest.raises(JobStateError, match="already cancelled; there is nothing to cancel") as err:
        jobs.cancel(app, job.id)
    assert err.value.exit_code == 5


def test_cancel_finished_job_is_a_conflict(app: App) -> None:
    job = jobs.submit(app, "sleep", {})
    _force(app, job.id, state.SUCCEEDED)
    with pytest.raises(JobStateError, match="already succeeded"):
        jobs.cancel(app, job.id)


def test_cancel_running_job_without_a_local_worker_sets_the_flag(app: App) -> None:
    job = jobs.submit(app, "sleep", {})
    _force(app, job.id, state.RUNNING)
    got = jobs.cancel(app, job.id)
    assert got.status == state.CANCELLING and got.cancel_requested and got.cancel_requested_at is not None
    assert jobs.cancel(app, job.id).status == state.CANCELLING  # asking twice is fine


def test_resume_needs_a_checkpoint(app: App) -> None:
    job = jobs.submit(app, "sleep", {})
    _force(app, job.id, state.FAILED)
    with pytest.raises(NoCheckpointError, match="has no checkpoint to resume from") as err:
        jobs.resume(app, job.id)
    assert err.value.exit_code == 5
    with app.db.session() as s:
        s.get_one(Job, job.id).checkpoint_step = 7
    with pytest.raises(NoCheckpointError, match="no longer holds it"):
        jobs.resume(app, job.id)  # the DB says 7 but the work dir lost it
    marker = state.work_dir(app.settings, job.id) / state.CHECKPOINT_MARKER
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text('{"step": 7}')
    resumed = jobs.resume(app, job.id)
    assert resumed.status == state.QUEUED and resumed.attempts == 0 and resumed.error is None
    assert resumed.checkpoint_step == 7
    assert jobs.show(app, job.id)["events"][-1]["message"] == "resuming from step 7"


def test_retry_and_resume_refuse_active_or_succeeded_jobs(app: App) -> None:
    running = jobs.submit(app, "sleep", {})
    _force(app, running.id, state.RUNNING)
    with pytest.raises(JobStateError, match="is running; only a failed or cancelled job can be retried"):
        jobs.retry(app, running.id)
    queued = jobs.submit(app, "sleep", {})
    with pytest.raises(JobStateError, match="is queued"):
        jobs.resume(app, queued.id)
    ok = jobs.submit(app, "sleep", {})
    _force(app, ok.id, state.SUCCEEDED)
    with pytest.raises(JobStateError, match="succeeded; submit a new job"):
        jobs.retry(app, ok.id)


def test_retry_fresh_discards_checkpoints_but_keeps_the_log(app: App) -> None:
    job = jobs.submit(app, "sleep", {})
    _force(app, job.id, state.FAILED, checkpoint_step=3, attempts=3)
    wd = state.work_dir(app.settings, job.id)
    (wd / "ckpt").mkdir(parents=True)
    (wd / "ckpt" / "weights").write_text("w")
    (wd / "job.log").write_text("old log\n")
    kept = jobs.retry(app, job.id)
    assert kept.status == state.QUEUED and kept.attempts == 0 and kept.checkpoint_step == 3
    assert (wd / "ckpt" / "weights").is_file()
    jobs.cancel(app, job.id)
    fresh = jobs.retry(app, job.id, fresh=True)
    assert fresh.checkpoint_step is None and [p.name for p in wd.iterdir()] == ["job.log"]
    assert jobs.logs(app, job.id) == "old log\n" and jobs.logs(app, job.id, tail=0) == ""


def test_worker_lost_requeues_until_attempts_run_out(app: App) -> None:
    job = jobs.submit(app, "sleep", {}, max_attempts=2)
    with app.db.session() as s:
        state.claim(s, job.id, hostname())
        assert state.worker_lost(s, job.id, "worker killed by SIGKILL", exit_code=-9) == state.QUEUED
        state.claim(s, job.id, hostname())
        assert state.worker_lost(s, job.id, "worker killed by SIGKILL") == state.FAILED
        assert state.worker_lost(s, job.id, "again") is None  # no longer active
    row = job_row(app, job.id)
    assert row.attempts == 2 and row.error == "worker killed by SIGKILL; gave up after 2 attempts"
    other = jobs.submit(app, "sleep", {})
    _force(app, other.id, state.RUNNING)
    jobs.cancel(app, other.id)
    with app.db.session() as s:
        assert state.worker_lost(s, other.id, "worker killed by SIGKILL") == state.CANCELLED


def test_a_job_runs_on_each_database(app: App, make_any_executor: MakeExecutor) -> None:
    job = jobs.submit(app, "sleep", {"steps": 3, "sleep": 0.02})
    done = run_until_done(make_any_executor(), job.id)
    assert done.status == state.SUCCEEDED and done.result["steps"] == 3
    assert [p["value"] for p in jobs.metrics(app, job.id, "loss")] == pytest.approx([1.0, 0.5, 1 / 3])
    with app.db.session() as s:
        assert s.scalar(select(Job.progress).where(Job.id == job.id)) == 1.0

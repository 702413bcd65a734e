"""What a worker is given: its GPUs (CUDA_VISIBLE_DEVICES) and a thread count from its CPUs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from onebox.jobs import state
from onebox.jobs.registry import HANDLERS, register_handler
from onebox.jobs.resources import Resources, machine_capacity
from onebox.services import jobs
from onebox.services.context import App
from tests.jobs.helpers import MakeExecutor, job_row, run_until_done

HANDLER = "tests.jobs.handlers:report_env"


@pytest.fixture(autouse=True)
def env_job_type() -> Iterator[None]:
    register_handler("report-env", HANDLER)
    yield
    del HANDLERS["report-env"]


def test_cpu_job_sees_no_gpu_and_its_thread_count(
    sqlite_app: App, make_executor: MakeExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    job = jobs.submit(sqlite_app, "report-env", {}, resources={"cpus": 2})
    done = run_until_done(make_executor(cpus=2, gpus=1), job.id)
    assert done.status == state.SUCCEEDED, done.error
    assert done.result == {"cuda_visible_devices": "", "omp_num_threads": "2", "project": "default"}
    assert done.devices == []


def test_gpu_jobs_get_distinct_devices(sqlite_app: App, make_executor: MakeExecutor) -> None:
    # Two 1-GPU jobs on an executor with 2 GPUs (the ids are only handed out; nothing uses CUDA).
    a = jobs.submit(sqlite_app, "report-env", {}, resources={"gpus": 1}, capacity=_two_gpus())
    b = jobs.submit(sqlite_app, "report-env", {}, resources={"gpus": 1}, capacity=_two_gpus())
    ex = make_executor(cpus=2, gpus=2)
    assert ex.tick().started == [a.id, b.id] and ex.free.gpus == 0
    assert ex.run_until(ex.idle, poll=0.05, timeout=20)
    seen = {job_row(sqlite_app, j.id).result["cuda_visible_devices"] for j in (a, b)}
    assert len(seen) == 2 and all(len(s) == 1 for s in seen)


def _two_gpus() -> Resources:
    return Resources(2, 2, 1024)


@pytest.mark.gpu
def test_a_real_gpu_is_detected_and_handed_out(sqlite_app: App, make_executor: MakeExecutor) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    cap = machine_capacity()
    assert cap.gpus == torch.cuda.device_count() >= 1
    job = jobs.submit(sqlite_app, "report-env", {"torch": True}, resources={"gpus": 1})
    done = run_until_done(make_executor(cpus=cap.cpus, gpus=cap.gpus), job.id, timeout=60)
    assert done.status == state.SUCCEEDED, done.error
    assert done.result["cuda_device_count"] == 1 and done.devices == [done.result["cuda_visible_devices"]]

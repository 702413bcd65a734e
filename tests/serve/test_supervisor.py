"""The supervisor against real processes (a stand-in worker that speaks the worker contract):
start and health, crash and restart with a count, give up and retry, scale, undeploy, routing,
and adapters hot-loaded (also a new version registered while serving) without a restart."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from onebox.config import Settings
from onebox.errors import ConflictError, NotFoundError, UnavailableError
from onebox.serve.supervisor import Supervisor, is_running
from onebox.services import deployments, models
from onebox.services.context import App, open_app
from onebox.services.deployments import DeploymentSpec

STANDIN = Path(__file__).with_name("standin_worker.py")


def standin_command(spec: DeploymentSpec, replica: int, port: int) -> list[str]:
    argv = [sys.executable, str(STANDIN), "--deployment", spec.id, "--replica", str(replica)]
    argv += ["--port", str(port)]
    return argv + [f"--adapter={a.name}={a.version_id}" for a in spec.adapters.values()]


@pytest.fixture
def reg(tmp_path: Path, tiny_model_dir: Path, tiny_lora_dirs: list[Path]) -> Iterator[App]:
    app = open_app(Settings(home=tmp_path / "home"))
    base = models.register(app, "tiny", str(tiny_model_dir)).version
    models.register(app, "tiny-lora", str(tiny_lora_dirs[0]), base_version_id=base.id)
    yield app
    app.close()


def run(coro_fn: Callable[[Supervisor], object], app: App, **kw: object) -> None:
    """Run ``coro_fn(supervisor)`` with a started supervisor, always stopping its workers."""

    async def main() -> None:
        sup = Supervisor(app, poll_interval=0.05, worker_command=standin_command, stop_grace=3, **kw)
        await sup.start()
        try:
            await coro_fn(sup)  # type: ignore[misc]
        finally:
            await sup.stop()

    asyncio.run(asyncio.wait_for(main(), 120))


async def until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def status(app: App, name: str) -> str:
    return deployments.show(app, name)["status"]


def test_start_crash_restart_scale_undeploy(reg: App) -> None:
    dep = deployments.deploy(reg, "tiny", replicas=2)

    async def scenario(sup: Supervisor) -> None:
        await until(lambda: status(reg, "tiny") == "ready")
        reps = sup.replicas_of(dep["id"])
        assert [r.state for r in reps] == ["ready", "ready"] and len({r.port for r in reps}) == 2
        assert reps[0].log_path == reg.settings.home / "logs" / "deployments" / "tiny-0.log"
        assert "standin worker" in reps[0].log_path.read_text()
        assert is_running(reg.settings)
        with pytest.raises(ConflictError, match="already runs"):
            Supervisor(reg).acquire_lock()

        # least outstanding requests first
        reps[0].outstanding = 3
        assert sup.pick("TINY")[1] is reps[1]
        reps[0].outstanding = 0

        # kill -9: counted, restarted with a new process, ready again
        old_pid = reps[0].pid
        os.kill(old_pid, signal.SIGKILL)
        await until(lambda: reps[0].restarts == 1 and reps[0].state == "ready")
        assert reps[0].pid != old_pid
        await until(lambda: status(reg, "tiny") == "ready")  # the database follows on the next reconcile
        shown = deployments.show(reg, "tiny")
        assert shown["restarts"] == 1 and shown["status"] == "ready"
        assert any("exited with code -9" in e["message"] for e in shown["events"])

        # scale down stops replica 1; scale up starts it again
        proc1 = reps[1].proc
        deployments.scale(reg, "tiny", 1)
        await until(lambda: proc1.poll() is not None and len(sup.replicas_of(dep["id"])) == 1)
        deployments.scale(reg, "tiny", 2)
        await until(lambda: len(sup.replicas_of(dep["id"])) == 2 and status(reg, "tiny") == "ready")

        # undeploy: every worker stops, the model id disappears
        procs = [r.proc for r in sup.replicas_of(dep["id"])]
        deployments.delete(reg, "tiny")
        await until(lambda: all(p.poll() is not None for p in procs) and not sup.replicas)
        with pytest.raises(NotFoundError, match="available models: none"):
            sup.pick("tiny")

    run(scenario, reg)
    assert not is_running(reg.settings)


def test_worker_that_cannot_start_fails_then_retries_on_scale(reg: App) -> None:
    deployments.deploy(reg, "tiny")

    async def scenario(sup: Supervisor) -> None:
        await until(lambda: status(reg, "tiny") == "failed")
        shown = deployments.show(reg, "tiny")
        failed = [e for e in shown["events"] if e["kind"] == "deployment.failed"]
        assert "failing on purpose" in failed[0]["message"]  # the log tail says why
        with pytest.raises(UnavailableError, match="failed"):
            sup.pick("tiny")
        sup.extra_env.pop("STANDIN_FAIL")
        deployments.scale(reg, "tiny", 1)  # asks for another try
        await until(lambda: status(reg, "tiny") == "ready")

    run(scenario, reg, env={"STANDIN_FAIL": "1"}, backoff_base=0.05)


def test_adapters_hot_load_and_follow_new_versions(reg: App, tiny_lora_dirs: list[Path]) -> None:
    dep = deployments.deploy(reg, "tiny")

    async def loaded(sup: Supervisor) -> dict[str, str]:
        r = sup.replicas_of(dep["id"])[0]
        async with httpx.AsyncClient() as c:
            return (await c.get(f"{r.url}/adapters")).json()

    async def scenario(sup: Supervisor) -> None:
        await until(lambda: status(reg, "tiny") == "ready")
        pid = sup.replicas_of(dep["id"])[0].pid
        with pytest.raises(NotFoundError):
            sup.pick("tiny-lora")

        deployments.add_adapter(reg, "tiny", "tiny-lora")
        await until(lambda: "tiny-lora" in sup.replicas_of(dep["id"])[0].adapters)
        first = (await loaded(sup))["tiny-lora"]
        assert Path(first, "adapter_config.json").is_file()
        assert sup.pick("tiny-lora")[0].adapter

        # a training job registers version 2 of the adapter: hot-loaded, same process
        base_id = dep["model_version_id"]
        models.register(reg, "tiny-lora", str(tiny_lora_dirs[1]), new_version=True, base_version_id=base_id)
        v2 = deployments.desired_state(reg)[0].adapters["tiny-lora"].version_id
        await until(lambda: sup.replicas_of(dep["id"])[0].adapters.get("tiny-lora") == v2)
        second = (await loaded(sup))["tiny-lora"]
        assert second != first and sup.replicas_of(dep["id"])[0].pid == pid
        events = [e["message"] for e in deployments.show(reg, "tiny")["events"]]
        assert any("loaded tiny-lora:2 (hot reload)" in m for m in events)

        deployments.remove_adapter(reg, "tiny", "tiny-lora")
        await until(lambda: not sup.replicas_of(dep["id"])[0].adapters)
        assert await loaded(sup) == {}
        assert sup.replicas_of(dep["id"])[0].pid == pid

    run(scenario, reg)


def test_restarted_worker_gets_adapters_at_start(reg: App) -> None:
    dep = deployments.deploy(reg, "tiny-lora")

    async def scenario(sup: Supervisor) -> None:
        await until(lambda: status(reg, dep["name"]) == "ready")
        r = sup.replicas_of(dep["id"])[0]
        assert list(r.adapters) == ["tiny-lora"]  # passed on the command line, no hot-load needed
        assert sorted(sup.model_ids()) == ["tiny-lora", "tiny-lora-base"]
        os.kill(r.pid, signal.SIGKILL)
        await until(lambda: r.restarts == 1 and r.state == "ready")
        assert list(r.adapters) == ["tiny-lora"]

    run(scenario, reg)

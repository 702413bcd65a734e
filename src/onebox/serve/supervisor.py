"""The supervisor: keeps worker processes in line with the deployments recorded in the store.

It runs as an asyncio task inside the gateway and, about once a second (or at once when woken),
reads the desired state, starts missing replicas on free loopback ports, waits for their
``/health``, restarts crashed ones with exponential backoff, stops replicas that are no longer
wanted, and hot-loads adapter changes (new adapters, new versions of served adapters) into ready
workers through ``POST /internal/adapters`` without a restart. What it observes goes back to the
store as the deployment's status and events; replica details (ports, pids, restarts) stay here
and are shown by the gateway's control plane.

A replica that fails ``max_start_failures`` times in a row before ever becoming ready is given up
on (status ``failed``, with the tail of its log) until the deployment changes (scale, redeploy).
Only one supervisor may run per home: a lock file keeps a second gateway from doubling workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from onebox import pidlock
from onebox.config import Settings
from onebox.errors import ConflictError, NotFoundError, UnavailableError
from onebox.services import deployments, models
from onebox.services.context import App
from onebox.services.deployments import DeploymentSpec
from onebox.services.names import name_key

log = logging.getLogger(__name__)

WORKER_MODULE = "onebox.serve.worker"

WorkerCommand = Callable[[DeploymentSpec, int, int], list[str]]
"""(spec, replica index, port) -> argv of a worker process."""


def default_worker_command(spec: DeploymentSpec, replica: int, port: int) -> list[str]:
    argv = [sys.executable, "-m", WORKER_MODULE, "--deployment", spec.id, "--replica", str(replica)]
    argv += ["--port", str(port)]
    for a in spec.adapters.values():
        argv += ["--adapter", f"{a.name}={a.version_id}"]
    return argv


def free_port() -> int:
    """A loopback port nobody listens on now (a worker that loses the race exits and is retried)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_tail(path: Path, lines: int = 12, limit: int = 4000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])[-limit:]


def lock_path(settings: Settings) -> Path:
    return settings.home / "run" / "supervisor.lock"


def is_running(settings: Settings) -> bool:
    """True when a gateway (with its supervisor) holds this home's lock."""
    path = lock_path(settings)
    if not path.exists():
        return False
    with open(path, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def gateway_pid(settings: Settings) -> int | None:
    """The pid of the gateway supervising this home's deployments (it wrote it into the lock);
    None when no gateway runs."""
    if not is_running(settings):
        return None
    try:
        text = lock_path(settings).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


@dataclass
class Replica:
    """One worker process of a deployment, as the supervisor sees it."""

    deployment_id: str
    deployment: str
    index: int
    log_path: Path
    state: str = "pending"  # pending | starting | ready | backoff | failed | stopping
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    retry_at: float = 0.0
    stop_deadline: float = 0.0
    restarts: int = 0
    failures: int = 0
    """Consecutive failures since the replica was last ready."""
    last_error: str | None = None
    adapters: dict[str, str] = field(default_factory=dict)
    """Adapter name -> model version id loaded in the worker."""
    spawn_adapters: dict[str, str] = field(default_factory=dict)
    adapter_failures: dict[str, str] = field(default_factory=dict)
    """Adapter name -> version id whose hot-load failed (not retried until the version changes)."""
    outstanding: int = 0
    """Requests the gateway has in flight on this replica (least-outstanding balancing)."""
    suspect: bool = False
    """The gateway could not reach it: not routed to until a health check passes again."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "replica": self.index,
            "state": self.state,
            "pid": self.pid,
            "port": self.port or None,
            "restarts": self.restarts,
            "outstanding": self.outstanding,
            "adapters": sorted(self.adapters),
            "last_error": self.last_error,
            "log": str(self.log_path),
        }


@dataclass(frozen=True)
class Route:
    deployment_id: str
    deployment: str
    model_id: str
    adapter: bool
    project_id: str = ""


class Supervisor:
    """Reconciles the deployments of every project in the home with worker processes on this
    machine; routes are per project, so a model name means different deployments in different
    projects and a caller never reaches another project's models."""

    def __init__(
        self,
        app: App,
        *,
        poll_interval: float = 1.0,
        worker_command: WorkerCommand = default_worker_command,
        startup_timeout: float = 600.0,
        stop_grace: float = 10.0,
        max_start_failures: int = 3,
        backoff_base: float = 1.0,
        backoff_max: float = 30.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.app = app
        self.poll_interval = poll_interval
        self.worker_command = worker_command
        self.startup_timeout = startup_timeout
        self.stop_grace = stop_grace
        self.max_start_failures = max_start_failures
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.extra_env = env or {}
        self.specs: dict[str, DeploymentSpec] = {}
        self.replicas: dict[tuple[str, int], Replica] = {}
        self.stopping: list[Replica] = []
        self.routes: dict[tuple[str, str], Route] = {}
        """(project id, case-folded model id) -> route."""
        self._reported: dict[str, str] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock: IO[str] | None = None
        self._http: httpx.AsyncClient | None = None
        self.log_dir = app.settings.home / "logs" / "deployments"

    # -- lifecycle ---------------------------------------------------------------------------

    def acquire_lock(self) -> None:
        home = self.app.settings.home
        self._lock = pidlock.acquire(
            lock_path(self.app.settings),
            lambda holder: ConflictError(
                f"another onebox server (pid {holder}) already runs the deployments of {home}; stop it first"
            ),
        )

    async def start(self) -> None:
        """Take the home's lock and start reconciling in the background."""
        self.acquire_lock()
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(5.0, connect=1.0))
        self._task = asyncio.create_task(self._loop(), name="onebox-supervisor")

    def wake(self) -> None:
        """Reconcile now (after a control-plane change) instead of at the next poll."""
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception:  # the store is briefly unreachable, a bug: keep supervising
                log.exception("reconcile failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            self._wake.clear()

    async def stop(self) -> None:
        """Stop reconciling, then SIGTERM every worker and SIGKILL those still up after the grace."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for r in list(self.replicas.values()):
            self._retire(r)
        self.replicas.clear()
        deadline = time.monotonic() + self.stop_grace
        while self.stopping and time.monotonic() < deadline:
            self._reap_stopping()
            await asyncio.sleep(0.05)
        for r in self.stopping:
            _kill(r)
        self.stopping.clear()
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self._lock is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    # -- reconcile ---------------------------------------------------------------------------

    async def reconcile(self) -> None:
        specs = await asyncio.to_thread(deployments.desired_state, self.app, all_projects=True)
        desired = {s.id: s for s in specs}
        for key, r in list(self.replicas.items()):
            spec = desired.get(r.deployment_id)
            if spec is None or r.index >= spec.replicas:
                del self.replicas[key]
                self._retire(r)
        self.specs = desired
        self._route(specs)
        for spec in specs:
            if spec.status == "starting" and self._reported.get(spec.id) == "failed":
                self._retry_failed(spec)  # the user scaled or otherwise asked for another try
            for i in range(spec.replicas):
                r = self.replicas.get((spec.id, i))
                if r is None:
                    r = Replica(spec.id, spec.name, i, self.log_dir / f"{spec.name}-{i}.log")
                    self.replicas[(spec.id, i)] = r
                await self._tend(spec, r)
            if spec.kind == "text":
                await self._sync_adapters(spec)
            await self._report(spec)
        self._reap_stopping()
        for gone in set(self._reported) - set(desired):
            del self._reported[gone]

    def _route(self, specs: list[DeploymentSpec]) -> None:
        routes: dict[tuple[str, str], Route] = {}
        for spec in specs:
            pid = spec.project_id
            routes[(pid, name_key(spec.name))] = Route(spec.id, spec.name, spec.name, False, pid)
            for a in spec.adapters:
                routes.setdefault((pid, name_key(a)), Route(spec.id, spec.name, a, True, pid))
        self.routes = routes

    def _retry_failed(self, spec: DeploymentSpec) -> None:
        for r in self.replicas_of(spec.id):
            if r.state == "failed":
                r.state, r.failures, r.retry_at = "pending", 0, 0.0
        self._reported[spec.id] = "starting"

    async def _tend(self, spec: DeploymentSpec, r: Replica) -> None:
        now = time.monotonic()
        if r.state in ("pending", "backoff") and now >= r.retry_at:
            self._spawn(spec, r)
            return
        if r.state not in ("starting", "ready") or r.proc is None:
            return
        code = r.proc.poll()
        if code is not None:
            await self._failed(spec, r, f"worker exited with code {code}", code)
            return
        if r.state == "ready" and r.suspect:
            r.suspect = not await self._healthy(r)
        elif r.state == "starting":
            if await self._healthy(r):
                r.state, r.failures, r.last_error = "ready", 0, None
                r.adapters = dict(r.spawn_adapters)
                log.info("%s replica %d ready on port %d", spec.name, r.index, r.port)
            elif now - r.started_at > self.startup_timeout:
                _kill(r)
                await self._failed(spec, r, f"not healthy after {self.startup_timeout:.0f} s", None)

    async def _healthy(self, r: Replica) -> bool:
        assert self._http is not None
        try:
            resp = await self._http.get(f"{r.url}/health", timeout=2.0)
        except httpx.HTTPError:
            return False
        return resp.status_code == 200

    def _spawn(self, spec: DeploymentSpec, r: Replica) -> None:
        r.port = free_port()
        r.spawn_adapters = {a.name: a.version_id for a in spec.adapters.values()}
        r.adapters, r.adapter_failures, r.suspect = {}, {}, False
        env = {**os.environ, **_settings_env(self.app.settings), **self.extra_env}
        # OpenMP waits: left at the default (short spins, then sleep); PASSIVE cost 25% of decode speed
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env["PYTHONUNBUFFERED"] = "1"
        threads = spec.engine.get("threads")
        if threads:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
        r.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = self.worker_command(spec, r.index, r.port)
        try:
            with open(r.log_path, "ab") as out:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                out.write(f"\n=== {stamp} starting {spec.name} replica {r.index} on port {r.port}\n".encode())
                out.flush()
                r.proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,  # Ctrl+C reaches the gateway, which stops workers itself
                )
        except OSError as exc:
            r.proc = None
            r.state, r.last_error = "failed", f"cannot start a worker: {exc}"
            return
        r.state, r.started_at = "starting", time.monotonic()
        log.info("started %s replica %d (pid %d, port %d)", spec.name, r.index, r.proc.pid, r.port)

    async def _failed(self, spec: DeploymentSpec, r: Replica, why: str, code: int | None) -> None:
        was_ready = r.state == "ready"
        tail = log_tail(r.log_path)
        r.proc, r.adapters = None, {}
        r.failures += 1
        r.last_error = f"{why}\n{tail}".strip() if tail else why
        give_up = not was_ready and r.failures >= self.max_start_failures
        if give_up:
            r.state = "failed"
        else:
            r.state, r.restarts = "backoff", r.restarts + 1
            delay = min(self.backoff_max, self.backoff_base * 2 ** (r.failures - 1))
            r.retry_at = time.monotonic() + delay * random.uniform(0.9, 1.1)
        message = f"{spec.name} replica {r.index}: {why}" + (" while starting" if not was_ready else "")
        message += "; giving up" if give_up else f"; restarting (restart {r.restarts})"
        log.warning(message)
        await asyncio.to_thread(
            deployments.record_event,
            self.app,
            spec.id,
            "deployment.replica_crashed",
            message,
            "error" if give_up else "warning",
            replica=r.index,
            exit_code=code,
            log_tail=tail,
        )

    def _retire(self, r: Replica) -> None:
        if r.proc is None or r.proc.poll() is not None:
            return
        r.state, r.stop_deadline = "stopping", time.monotonic() + self.stop_grace
        with contextlib.suppress(ProcessLookupError):
            r.proc.send_signal(signal.SIGTERM)
        self.stopping.append(r)

    def _reap_stopping(self) -> None:
        now = time.monotonic()
        for r in list(self.stopping):
            if r.proc is None or r.proc.poll() is not None:
                self.stopping.remove(r)
            elif now > r.stop_deadline:
                _kill(r)
                self.stopping.remove(r)

    async def _sync_adapters(self, spec: DeploymentSpec) -> None:
        """Load adapters (or newer versions) the spec wants and unload those it dropped."""
        assert self._http is not None
        for r in self.replicas_of(spec.id):
            if r.state != "ready":
                continue
            for a in spec.adapters.values():
                if r.adapters.get(a.name) == a.version_id or r.adapter_failures.get(a.name) == a.version_id:
                    continue
                try:
                    path = await asyncio.to_thread(
                        models.checkout, self.app, a.version_ref, weights_in_memory=True
                    )
                    resp = await self._http.post(
                        f"{r.url}/internal/adapters", json={"name": a.name, "path": str(path)}, timeout=120
                    )
                    resp.raise_for_status()
                except Exception as exc:  # checkout failed, worker refused the adapter
                    r.adapter_failures[a.name] = a.version_id
                    detail = _error_text(exc)
                    await asyncio.to_thread(
                        deployments.record_event,
                        self.app,
                        spec.id,
                        "deployment.adapter_failed",
                        f"{spec.name} replica {r.index}: cannot load {a.version_ref}: {detail}",
                        "error",
                        adapter=a.name,
                    )
                    continue
                previous = r.adapters.get(a.name)
                r.adapters[a.name] = a.version_id
                await asyncio.to_thread(
                    deployments.record_event,
                    self.app,
                    spec.id,
                    "deployment.adapter_loaded",
                    f"{spec.name} replica {r.index}: loaded {a.version_ref}"
                    + (" (hot reload)" if previous else ""),
                    adapter=a.name,
                    version=a.version_ref,
                )
            for name in [n for n in r.adapters if n not in spec.adapters]:
                try:
                    resp = await self._http.delete(f"{r.url}/internal/adapters/{name}", timeout=30)
                    if resp.status_code not in (200, 204, 404):
                        resp.raise_for_status()
                except httpx.HTTPError as exc:
                    log.warning("cannot unload %s from %s replica %d: %s", name, spec.name, r.index, exc)
                    continue
                del r.adapters[name]

    async def _report(self, spec: DeploymentSpec) -> None:
        reps = [self.replicas[(spec.id, i)] for i in range(spec.replicas)]
        ready = sum(r.state == "ready" for r in reps)
        message = None
        if spec.replicas == 0:
            status = "stopped"
        elif ready == spec.replicas:
            status = "ready"
        elif ready:
            status = "degraded"
        elif any(r.state == "failed" for r in reps):
            status = "failed"
            message = next(r.last_error for r in reps if r.state == "failed")
        else:
            status = "starting"
        if status != spec.status or self._reported.get(spec.id) != status:
            self._reported[spec.id] = status
            if status != spec.status:
                text = f"{spec.name} is {status} ({ready}/{spec.replicas} replicas ready)"
                if message:
                    text += f": {message}"
                await asyncio.to_thread(deployments.set_status, self.app, spec.id, status, text)
                spec.status = status

    # -- for the gateway ---------------------------------------------------------------------

    def replicas_of(self, deployment_id: str) -> list[Replica]:
        return sorted((r for (d, _), r in self.replicas.items() if d == deployment_id), key=lambda r: r.index)

    def routes_of(self, project_id: str | None) -> list[Route]:
        """The routes a caller in ``project_id`` may use (None: every project, for the box itself)."""
        return [r for (pid, _), r in self.routes.items() if project_id is None or pid == project_id]

    def model_ids(self, project_id: str | None = None) -> list[str]:
        return sorted(r.model_id for r in self.routes_of(project_id))

    def route(self, model: str, project_id: str | None = None) -> Route:
        key = name_key(model)
        if project_id is not None:
            route = self.routes.get((project_id, key))
        else:
            route = next((r for (_, k), r in self.routes.items() if k == key), None)
        if route is None:
            available = ", ".join(self.model_ids(project_id)) or "none (deploy one with `onebox deploy`)"
            raise NotFoundError(
                f"the model {model!r} does not exist; available models: {available}",
                param="model",
                openai_code="model_not_found",
            )
        return route

    def pick(self, model: str, project_id: str | None = None) -> tuple[Route, Replica]:
        """A ready replica serving ``model``, the one with the fewest requests in flight."""
        route = self.route(model, project_id)
        candidates = [
            r
            for r in self.replicas_of(route.deployment_id)
            if r.state == "ready" and not r.suspect and (not route.adapter or route.model_id in r.adapters)
        ]
        if not candidates:
            spec = self.specs.get(route.deployment_id)
            status = spec.status if spec else "starting"
            raise UnavailableError(
                f"model {route.model_id!r} has no ready worker (deployment {route.deployment!r} is "
                f"{status}); retry shortly",
                param="model",
                retry_after=2,
            )
        low = min(r.outstanding for r in candidates)
        return route, random.choice([r for r in candidates if r.outstanding == low])

    def mark_unreachable(self, r: Replica) -> None:
        """The gateway could not reach it: route elsewhere until the next reconcile looks."""
        r.suspect = True
        self.wake()

    def runtime(self, deployment_id: str) -> list[dict[str, Any]]:
        return [r.as_dict() for r in self.replicas_of(deployment_id)]

    async def worker_stats(self) -> list[tuple[Replica, dict[str, Any]]]:
        """``/stats`` of every ready replica, fetched concurrently (failures skipped)."""
        ready = [r for r in self.replicas.values() if r.state == "ready"]
        client = self._http or httpx.AsyncClient(timeout=2.0)

        async def one(r: Replica) -> tuple[Replica, dict[str, Any]] | None:
            try:
                resp = await client.get(f"{r.url}/stats", timeout=2.0)
                return (r, resp.json()) if resp.status_code == 200 else None
            except (httpx.HTTPError, ValueError):
                return None

        try:
            results = await asyncio.gather(*(one(r) for r in ready))
        finally:
            if client is not self._http:
                await client.aclose()
        return [x for x in results if x is not None]


def _kill(r: Replica) -> None:
    if r.proc is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(r.proc.pid, signal.SIGKILL)  # the worker leads its own session
    with contextlib.suppress(ProcessLookupError):
        r.proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        r.proc.wait(timeout=5)


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        try:
            body = exc.response.json()
            return str(body.get("error", {}).get("message") or body)
        except ValueError:
            return exc.response.text[:500]
    return str(exc) or type(exc).__name__


def _settings_env(settings: Settings) -> dict[str, str]:
    from onebox.jobs.executor import _settings_env as settings_env

    return settings_env(settings)

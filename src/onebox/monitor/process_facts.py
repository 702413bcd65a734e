"""What the topology needs to know about live processes on this host: whether a worker is alive
and how big it is now, and which children of the gateway serve a deployment.

Deployment workers are known by pid only inside the gateway that supervises them; from any other
process (the CLI) they are found as the gateway's children whose command line names the
deployment (``--deployment <id> --replica <n>``, how the supervisor starts every worker).
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil

from onebox.monitor.topology_facts import LiveProcess

GONE = (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied)


def inspect(pid: int) -> LiveProcess:
    """The process ``pid`` now (``alive`` False when there is none)."""
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            status = p.status()
            times = p.cpu_times()
            rss = p.memory_info().rss
            born = p.create_time()
        children = len(p.children(recursive=True))
    except psutil.ZombieProcess:
        return LiveProcess(alive=True, status=psutil.STATUS_ZOMBIE)
    except GONE:
        return LiveProcess(alive=False)
    return LiveProcess(
        alive=status != psutil.STATUS_DEAD,
        status=status,
        rss_bytes=rss,
        cpu_seconds=times.user + times.system,
        children=children,
        started_at=born,
    )


@dataclass(frozen=True)
class FoundWorker:
    pid: int
    replica: int | None


def _flag(args: list[str], name: str) -> str | None:
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def deployment_workers(parent_pid: int, deployment_id: str) -> list[FoundWorker]:
    """Children of ``parent_pid`` (the gateway) started for ``deployment_id``, by replica."""
    try:
        children = psutil.Process(parent_pid).children(recursive=False)
    except GONE:
        return []
    out = []
    for c in children:
        try:
            args = c.cmdline()
        except GONE:
            continue
        if _flag(args, "--deployment") != deployment_id:
            continue
        replica = _flag(args, "--replica")
        out.append(FoundWorker(c.pid, int(replica) if replica and replica.isdigit() else None))
    return sorted(out, key=lambda w: (w.replica is None, w.replica or 0, w.pid))

"""Process helpers: is a job's worker alive, and signalling it (alone or with its children)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket

WORKER_MODULE = "onebox.jobs.worker"


def hostname() -> str:
    return socket.gethostname()


def worker_alive(pid: int | None, job_id: str) -> bool:
    """True when ``pid`` is a live (not zombie) worker process of ``job_id``.

    The command line is checked so that a pid reused by an unrelated process after a reboot or a
    long downtime is not mistaken for the worker.
    """
    if not pid:
        return False
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:  # exited; its parent has not collected it yet
            return False
        cmdline = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True  # it exists and belongs to someone else; be conservative
    return WORKER_MODULE in cmdline and job_id in cmdline


def reap(pid: int) -> int | None:
    """Collect the exit status of ``pid`` if it is our exited child (else None)."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    if done == 0:
        return None
    return os.waitstatus_to_exitcode(status)


def terminate(pid: int) -> bool:
    """Ask the worker to stop (SIGTERM to it alone; it stops its own children)."""
    try:
        os.kill(pid, signal.SIGTERM)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def kill_group(pid: int) -> bool:
    """SIGKILL the worker and everything it started (the worker leads its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:  # only a group the worker leads, never its parent's
            os.killpg(pid, signal.SIGKILL)
            return True
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except (ProcessLookupError, PermissionError):
        return False

"""What a recorded worker exit means: killed by the OOM killer, crashed, or stopped by onebox.

Workers' ends are already recorded as events by the layers that watch them: the job executor
(``job.requeued``/``job.failed``/``job.cancelled`` with ``reason`` and ``exit_code`` from
``state.worker_lost``) and the deployment supervisor (``deployment.replica_crashed`` with
``exit_code`` and the log's tail). A worker that died of SIGKILL (exit code -9, or 137 from a
shell) without onebox having killed it was, on a Linux box, almost always killed by the kernel's
OOM killer; a memory error in its log says the same for a worker that died on its own. The
kernel's own count of OOM kills (``oom_kill`` in ``/proc/vmstat``) confirms it when it moved.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXIT_KINDS = ("job.requeued", "job.failed", "job.cancelled", "deployment.replica_crashed")
"""Event kinds that may record a worker's death."""

SIGKILL_CODES = frozenset({-9, 137})
OOM_TEXT = re.compile(
    r"out of memory|oom-kill|killed process \d+|MemoryError|OutOfMemoryError|Cannot allocate memory",
    re.IGNORECASE,
)
ONEBOX_KILLED = "worker killed:"
"""The executor's reason when it killed the worker itself (heartbeat lost, cancel grace over)."""

VMSTAT = Path("/proc/vmstat")

OOM = "oom"
CRASHED = "crashed"


@dataclass(frozen=True)
class WorkerExit:
    cause: str
    """``oom`` or ``crashed``."""
    exit_code: int | None
    evidence: str
    """Why we think so, for the alert's message."""


def classify(kind: str, data: dict[str, Any]) -> WorkerExit | None:
    """The meaning of one recorded exit; None when it is not a worker death onebox did not cause
    (a handler that failed cleanly, a cancel, a kill for a lost heartbeat)."""
    if kind not in EXIT_KINDS:
        return None
    if kind != "deployment.replica_crashed" and "reason" not in data:
        return None  # job.failed from the handler itself: the worker reported its outcome
    reason = str(data.get("reason") or "")
    if reason.startswith(ONEBOX_KILLED) or "control process" in reason or kind == "job.cancelled":
        return None  # onebox stopped it, or lost track of it while its own executor restarted
    code = data.get("exit_code")
    code = code if isinstance(code, int) and not isinstance(code, bool) else None
    tail = str(data.get("log_tail") or "")
    found = OOM_TEXT.search(tail)
    if found:
        return WorkerExit(OOM, code, f"its log says {found.group(0)!r}")
    if code in SIGKILL_CODES:
        return WorkerExit(OOM, code, "killed by SIGKILL, which onebox did not send")
    if code is not None and code != 0:
        return WorkerExit(CRASHED, code, f"exited with code {code}")
    if kind == "deployment.replica_crashed" and code is None:
        return None  # not healthy in time: the supervisor killed it, the deployment events say why
    return WorkerExit(CRASHED, code, reason or "its worker disappeared")


def kernel_oom_kills(path: Path = VMSTAT) -> int | None:
    """The kernel's count of processes its OOM killer killed since boot (Linux 4.13+), or None."""
    try:
        text = path.read_text(encoding="ascii")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            try:
                return int(value)
            except ValueError:
                return None
    return None

"""One holder at a time: an exclusive ``flock`` on a file that records the holder's pid.

Used where two processes acting on the same home would duplicate work (two job executors, two
servers starting the same deployments). The lock dies with its process, so a crash never leaves a
stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from onebox.errors import OneboxError


def acquire(path: Path, busy: Callable[[str], OneboxError]) -> TextIO:
    """Take the lock or raise ``busy(holder_pid)``; keep the returned file open to hold it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the holder's lifetime
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "?"
        f.close()
        raise busy(holder) from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f

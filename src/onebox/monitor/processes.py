"""CPU, memory and GPU memory of a task's processes: a worker and everything it started."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import psutil

from onebox.monitor.rates import RateTracker


@dataclass(frozen=True)
class ProcessUsage:
    processes: int
    cpu_cores: float | None
    """Cores busy on average since the last pass (None on the first sight of every process)."""
    memory_rss_bytes: int
    gpu_memory_bytes: int | None


def process_tree(pids: Iterable[int]) -> list[psutil.Process]:
    """The live processes ``pids`` and all their descendants (each once)."""
    out: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for p in (root, *root.children(recursive=True)):
                out.setdefault(p.pid, p)
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
    return list(out.values())


class ProcessMeter:
    """Measures process trees between passes; CPU is a rate of each process's own CPU time, so a
    child that exits or starts between passes does not distort the sum."""

    def __init__(self) -> None:
        self._rates = RateTracker()

    def measure(
        self, pids: Iterable[int], now: float, gpu_memory: dict[int, int] | None = None
    ) -> ProcessUsage:
        procs = process_tree(pids)
        cores: float | None = None
        rss = 0
        for p in procs:
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    rss += p.memory_info().rss
                    born = p.create_time()
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
            r = self._rates.rate((p.pid, born), t.user + t.system, now)
            if r is not None:
                cores = (cores or 0.0) + r
        gpu = None
        if gpu_memory is not None:
            gpu = sum(gpu_memory.get(p.pid, 0) for p in procs)
        return ProcessUsage(len(procs), cores, rss, gpu)

    def sweep(self) -> None:
        """Forget processes not measured since the last sweep."""
        self._rates.sweep()

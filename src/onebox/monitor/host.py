"""Component-level collectors of the machine itself through psutil: CPU per core, memory, file
systems, block-device IO and network rates.

Rates need two passes; the first pass after start reports only the gauges. Loop, RAM and
partition devices are left out of disk IO (the whole disk is counted once), and the loopback
interface out of the network.
"""

from __future__ import annotations

import re
from typing import Any

import psutil

from onebox.monitor.rates import RateTracker
from onebox.monitor.samples import COMPONENT, Sample

SKIP_DISKS = re.compile(r"^(loop|ram|zram|fd|sr)\d*")
SKIP_NICS = frozenset({"lo"})
SKIP_FSTYPES = frozenset({"squashfs", "tmpfs", "devtmpfs", "overlay", "iso9660"})


def _cpu_busy_total(t: Any) -> tuple[float, float]:
    fields = t._asdict()
    # guest time is already counted in user (Linux), so it is left out of the total
    total = sum(v for k, v in fields.items() if k not in ("guest", "guest_nice"))
    idle = fields.get("idle", 0.0) + fields.get("iowait", 0.0)
    return total - idle, total


def whole_disks(names: list[str]) -> list[str]:
    """Block devices worth counting: whole disks, not their partitions, loops or RAM disks."""
    keep = [n for n in names if not SKIP_DISKS.match(n)]
    out = []
    for n in keep:
        is_partition = any(n != d and n.startswith(d) and re.fullmatch(r"p?\d+", n[len(d) :]) for d in keep)
        if not is_partition:
            out.append(n)
    return sorted(out)


class HostCollector:
    """CPU, memory, file systems, disks and network of this machine, as component samples."""

    def __init__(self, *, mountpoints: list[str] | None = None) -> None:
        self._rates = RateTracker()
        self._mountpoints = mountpoints
        """File systems to report (default: every real one psutil lists)."""

    def collect(self, now: float) -> list[Sample]:
        out: list[Sample] = []
        out += self._cpu(now)
        out += self._memory()
        out += self._filesystems()
        out += self._disks(now)
        out += self._network(now)
        self._rates.sweep()
        return out

    def _cpu(self, now: float) -> list[Sample]:
        out = []
        for i, t in enumerate(psutil.cpu_times(percpu=True)):
            busy, total = _cpu_busy_total(t)
            d_busy = self._rates.delta(("cpu", i, "busy"), busy, now)
            d_total = self._rates.delta(("cpu", i, "total"), total, now)
            if d_busy is not None and d_total:
                out.append(Sample(COMPONENT, f"cpu{i}", "cpu_usage_ratio", _clip(d_busy / d_total)))
        return out

    def _memory(self) -> list[Sample]:
        vm = psutil.virtual_memory()
        used = vm.total - vm.available
        return [
            Sample(COMPONENT, "memory", "memory_total_bytes", float(vm.total)),
            Sample(COMPONENT, "memory", "memory_used_bytes", float(used)),
            Sample(COMPONENT, "memory", "memory_available_bytes", float(vm.available)),
            Sample(COMPONENT, "memory", "memory_usage_ratio", used / vm.total if vm.total else 0.0),
            Sample(COMPONENT, "memory", "swap_used_bytes", float(psutil.swap_memory().used)),
        ]

    def mountpoints(self) -> list[str]:
        if self._mountpoints is not None:
            return self._mountpoints
        seen: set[str] = set()
        out = []
        for p in psutil.disk_partitions(all=False):
            if p.fstype in SKIP_FSTYPES or p.mountpoint.startswith(("/snap/", "/boot/efi")):
                continue
            if p.device in seen:  # bind mounts of one device: count it once
                continue
            seen.add(p.device)
            out.append(p.mountpoint)
        return out or ["/"]

    def _filesystems(self) -> list[Sample]:
        out = []
        for mp in self.mountpoints():
            try:
                u = psutil.disk_usage(mp)
            except OSError:
                continue
            res = f"fs:{mp}"
            out.append(Sample(COMPONENT, res, "fs_total_bytes", float(u.total)))
            out.append(Sample(COMPONENT, res, "fs_used_bytes", float(u.used)))
            # used / (used + free) is what df shows: reserved blocks are not free to users
            denom = u.used + u.free
            out.append(Sample(COMPONENT, res, "fs_usage_ratio", u.used / denom if denom else 0.0))
        return out

    def _disks(self, now: float) -> list[Sample]:
        counters = psutil.disk_io_counters(perdisk=True) or {}
        out = []
        for name in whole_disks(list(counters)):
            c = counters[name]
            for metric, value in (
                ("disk_read_bytes_per_second", c.read_bytes),
                ("disk_write_bytes_per_second", c.write_bytes),
                ("disk_read_ops_per_second", c.read_count),
                ("disk_write_ops_per_second", c.write_count),
            ):
                r = self._rates.rate(("disk", name, metric), float(value), now)
                if r is not None:
                    out.append(Sample(COMPONENT, f"disk:{name}", metric, r))
        return out

    def _network(self, now: float) -> list[Sample]:
        counters = psutil.net_io_counters(pernic=True) or {}
        out = []
        for name in sorted(counters):
            if name in SKIP_NICS:
                continue
            c = counters[name]
            errors = c.errin + c.errout + c.dropin + c.dropout
            for metric, value in (
                ("net_receive_bytes_per_second", c.bytes_recv),
                ("net_transmit_bytes_per_second", c.bytes_sent),
                ("net_errors_per_second", errors),
            ):
                r = self._rates.rate(("net", name, metric), float(value), now)
                if r is not None:
                    out.append(Sample(COMPONENT, f"net:{name}", metric, r))
        return out


def _clip(v: float) -> float:
    return min(max(v, 0.0), 1.0)

"""Component collectors on this machine: sane values, rates after a second pass."""

from __future__ import annotations

import time

import psutil

from onebox.monitor.host import HostCollector, whole_disks
from onebox.monitor.samples import COMPONENT


def test_first_pass_has_gauges_second_pass_adds_rates() -> None:
    host = HostCollector()
    first = host.collect(time.time())
    assert not any(s.metric.endswith("_per_second") or s.metric == "cpu_usage_ratio" for s in first)
    time.sleep(0.3)
    second = host.collect(time.time())
    assert {s.level for s in second} == {COMPONENT}
    cores = {s.resource: s.value for s in second if s.metric == "cpu_usage_ratio"}
    # a core whose counters did not move (idle, tickless kernel) is left out of that one pass
    assert cores and set(cores) <= {f"cpu{i}" for i in range(psutil.cpu_count())}
    assert all(0 <= v <= 1 for v in cores.values())
    by = {(s.resource, s.metric): s.value for s in second}
    assert by[("memory", "memory_total_bytes")] == psutil.virtual_memory().total
    assert 0 < by[("memory", "memory_usage_ratio")] < 1
    assert 0 < by[("fs:/", "fs_usage_ratio")] < 1 and by[("fs:/", "fs_total_bytes")] > 0
    rates = [s for s in second if s.metric.endswith("_per_second")]
    assert rates and all(s.value >= 0 for s in rates)
    assert not any(s.resource == "net:lo" for s in second)


def test_only_whole_disks_count_for_io() -> None:
    names = ["loop0", "loop7", "sda", "sda1", "sda2", "nvme0n1", "nvme0n1p1", "vda", "zram0", "ram1", "dm-0"]
    assert whole_disks(names) == ["dm-0", "nvme0n1", "sda", "vda"]

"""Node aggregates, versions and health checks."""

from __future__ import annotations

from onebox import __version__
from onebox.monitor.node import aggregate, health_problems, identify
from onebox.monitor.nvml import GpuCollector
from onebox.monitor.samples import COMPONENT, NODE, Sample
from tests.monitor.fakes import FakeNvml


def test_identity_names_the_node_and_its_software() -> None:
    node = identify("rack1-n3")
    assert node.id == "rack1-n3" and node.hostname
    assert node.versions["onebox"] == __version__ and node.versions["python"]
    assert "torch" in node.versions  # from package metadata: torch is not imported for this
    assert node.info["cpus"] >= 1 and node.info["gpus"] == []
    assert identify().id == node.hostname


def test_aggregates_over_components() -> None:
    gpus = GpuCollector.open(FakeNvml())
    node = identify("n1", gpus)
    comp = [
        Sample(COMPONENT, "cpu0", "cpu_usage_ratio", 0.2),
        Sample(COMPONENT, "cpu1", "cpu_usage_ratio", 0.6),
        Sample(COMPONENT, "fs:/", "fs_usage_ratio", 0.3),
        Sample(COMPONENT, "fs:/data", "fs_usage_ratio", 0.7),
        Sample(COMPONENT, "disk:sda", "disk_read_bytes_per_second", 10.0),
        Sample(COMPONENT, "disk:sdb", "disk_read_bytes_per_second", 5.0),
        *(gpus.collect() if gpus else []),
    ]
    got = {s.metric: s.value for s in aggregate(comp, node, 1000.0)}
    assert all(s.level == NODE and s.resource == "n1" for s in aggregate(comp, node, 1000.0))
    assert abs(got["cpu_usage_ratio"] - 0.4) < 1e-9
    assert got["fs_usage_ratio"] == 0.7 and got["disk_read_bytes_per_second"] == 15
    assert got["gpu_count"] == 2 and got["gpu_memory_used_bytes"] == 40 * 2**30
    assert got["gpu_temperature_celsius"] == 94 and got["gpu_throttled"] == 1
    assert got["node_heartbeat_timestamp_seconds"] == 1000.0 and got["node_healthy"] == 1.0
    assert {s.metric: s.value for s in aggregate(comp, node, 1000.0, ["x"])}["node_healthy"] == 0.0


def test_health_checks() -> None:
    comp = [
        Sample(COMPONENT, "fs:/data", "fs_usage_ratio", 0.97),
        Sample(COMPONENT, "fs:/", "fs_usage_ratio", 0.5),
        Sample(COMPONENT, "memory", "memory_usage_ratio", 0.5),
        Sample(COMPONENT, "gpu1", "gpu_temperature_celsius", 93),
        Sample(COMPONENT, "gpu1", "gpu_ecc_uncorrected_errors", 2),
        Sample(COMPONENT, "gpu0", "gpu_ecc_uncorrected_errors", 0),
        Sample(COMPONENT, "gpu1", "gpu_throttled", 1),
    ]
    assert health_problems(comp, ["gpu2 (X) does not answer NVML"]) == [
        "gpu2 (X) does not answer NVML",
        "file system /data is 97% full",
        "gpu1 is at 93 °C",
        "gpu1 has 2 uncorrected ECC errors",
        "gpu1 is throttled",
    ]
    assert health_problems(comp[1:3]) == []

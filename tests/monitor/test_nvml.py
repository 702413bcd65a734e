"""The NVML mapping, through an injected fake ``pynvml`` (this machine has no GPU)."""

from __future__ import annotations

import pytest

from onebox.monitor.nvml import GpuCollector, import_nvml, throttle_reasons
from tests.monitor.fakes import FakeNvml


def _values(samples, resource):
    return {s.metric: s.value for s in samples if s.resource == resource}


def test_every_metric_is_mapped_with_its_unit() -> None:
    gpus = GpuCollector.open(FakeNvml())
    assert gpus is not None
    g0 = _values(gpus.collect(), "gpu0")
    assert g0 == {
        "gpu_utilization_ratio": pytest.approx(0.87),
        "gpu_memory_utilization_ratio": pytest.approx(0.40),
        "gpu_memory_total_bytes": 80 * 2**30,
        "gpu_memory_used_bytes": 20 * 2**30,
        "gpu_temperature_celsius": 64,
        "gpu_power_watts": pytest.approx(350.5),
        "gpu_power_limit_watts": 700,
        "gpu_sm_clock_hertz": 1980e6,
        "gpu_memory_clock_hertz": 2619e6,
        "gpu_ecc_corrected_errors": 5,
        "gpu_ecc_uncorrected_errors": 1,
        "gpu_pcie_receive_bytes_per_second": 1000 * 1024,
        "gpu_pcie_transmit_bytes_per_second": 250 * 1024,
        "gpu_throttle_reasons": 0x1,
        "gpu_throttled": 0,  # idle is not trouble
    }
    assert gpus.problems == []


def test_unsupported_calls_are_left_out_and_throttling_is_named() -> None:
    gpus = GpuCollector.open(FakeNvml())
    assert gpus is not None
    samples = gpus.collect()
    g1 = _values(samples, "gpu1")
    assert "gpu_ecc_corrected_errors" not in g1 and "gpu_ecc_uncorrected_errors" not in g1
    assert g1["gpu_throttled"] == 1 and g1["gpu_temperature_celsius"] == 94
    assert throttle_reasons(int(g1["gpu_throttle_reasons"])) == ["sw_power_cap", "hw_thermal_slowdown"]
    assert {s.name for s in samples} == {"NVIDIA H100 80GB HBM3"}  # bytes decoded


def test_a_lost_gpu_is_a_problem_not_a_crash() -> None:
    nvml = FakeNvml()
    gpus = GpuCollector.open(nvml)
    assert gpus is not None
    nvml.lost.add(1)
    samples = gpus.collect()
    assert {s.resource for s in samples} == {"gpu0"}
    assert gpus.problems == ["gpu1 (NVIDIA H100 80GB HBM3) does not answer NVML"]


def test_versions_devices_and_process_memory() -> None:
    gpus = GpuCollector.open(FakeNvml())
    assert gpus is not None
    assert gpus.versions() == {"nvidia_driver": "550.54.15", "cuda_driver": "12.4"}
    assert [d["uuid"] for d in gpus.devices()] == ["GPU-0000", "GPU-0001"]
    assert gpus.process_memory() == {4242: 6 * 2**30}  # both GPUs; unknown usage skipped
    gpus.close()


@pytest.mark.parametrize("nvml", [FakeNvml(init_error=True), FakeNvml(count=0)])
def test_no_driver_or_no_gpu_means_no_collector(nvml: FakeNvml) -> None:
    assert GpuCollector.open(nvml) is None


def test_this_machine_skips_gpus_cleanly() -> None:
    """Here: either nvidia-ml-py is missing or it finds no driver; both give None, never an error."""
    if import_nvml() is not None and GpuCollector.open() is not None:
        pytest.skip("this machine has a GPU: see test_real_gpu")
    assert GpuCollector.open() is None


@pytest.mark.gpu
def test_real_gpu() -> None:
    gpus = GpuCollector.open()
    if gpus is None:
        pytest.skip("no GPU visible through NVML")
    samples = gpus.collect()
    got = _values(samples, "gpu0")
    assert 0 <= got["gpu_utilization_ratio"] <= 1
    assert got["gpu_memory_total_bytes"] > 2**30
    assert 0 < got["gpu_temperature_celsius"] < 120
    assert got["gpu_sm_clock_hertz"] > 1e8
    assert gpus.versions()["nvidia_driver"]
    gpus.close()

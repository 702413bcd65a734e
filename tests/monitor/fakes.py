"""A stand-in for the ``pynvml`` module: two GPUs, one of which supports no ECC and then dies."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any


class NVMLError(Exception):
    pass


class FakeNvml:
    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_VOLATILE_ECC = 0
    NVML_PCIE_UTIL_TX_BYTES = 0
    NVML_PCIE_UTIL_RX_BYTES = 1

    def __init__(self, count: int = 2, *, init_error: bool = False) -> None:
        self.count = count
        self.init_error = init_error
        self.lost: set[int] = set()
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.init_error:
            raise NVMLError("NVML Shared Library Not Found")

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def _check(self, h: int) -> None:
        if h in self.lost:
            raise NVMLError("GPU is lost")

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54.15"

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return 12040

    def nvmlDeviceGetName(self, h: int) -> bytes:
        return b"NVIDIA H100 80GB HBM3"  # old bindings return bytes

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return f"GPU-{h:04d}"

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        self._check(h)
        return SimpleNamespace(gpu=87, memory=40)

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        self._check(h)
        return SimpleNamespace(total=80 * 2**30, used=20 * 2**30, free=60 * 2**30)

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        self._check(h)
        assert sensor == self.NVML_TEMPERATURE_GPU
        return 64 + 30 * h  # gpu1 runs hot (94 °C)

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        self._check(h)
        return 350_500  # milliwatts

    def nvmlDeviceGetEnforcedPowerLimit(self, h: int) -> int:
        self._check(h)
        return 700_000

    def nvmlDeviceGetClockInfo(self, h: int, clock: int) -> int:
        self._check(h)
        return {self.NVML_CLOCK_SM: 1980, self.NVML_CLOCK_MEM: 2619}[clock]  # MHz

    def nvmlDeviceGetTotalEccErrors(self, h: int, kind: int, counter: int) -> int:
        self._check(h)
        if h == 1:
            raise NVMLError("Not Supported")
        return {self.NVML_MEMORY_ERROR_TYPE_CORRECTED: 5, self.NVML_MEMORY_ERROR_TYPE_UNCORRECTED: 1}[kind]

    def nvmlDeviceGetPcieThroughput(self, h: int, counter: int) -> int:
        self._check(h)
        return {self.NVML_PCIE_UTIL_RX_BYTES: 1000, self.NVML_PCIE_UTIL_TX_BYTES: 250}[counter]  # KB/s

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: int) -> int:
        self._check(h)
        return 0x1 if h == 0 else 0x40 | 0x4  # idle; hardware thermal slowdown + power cap

    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list[Any]:
        self._check(h)
        return [
            SimpleNamespace(pid=4242, usedGpuMemory=3 * 2**30),
            SimpleNamespace(pid=7, usedGpuMemory=None),
        ]

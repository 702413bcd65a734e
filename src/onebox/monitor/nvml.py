"""Per-GPU component samples through NVML: the one place that imports ``pynvml``.

``pynvml`` comes from the optional ``nvidia-ml-py`` package (extra ``gpu``). Without the package,
without a driver, or with no GPU, :meth:`GpuCollector.open` returns None and monitoring goes on
without GPUs. A call a GPU does not support (ECC on consumer boards, PCIe counters in some VMs)
leaves that one metric out; a GPU that stops answering is reported in ``problems``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import ModuleType
from typing import Any

from onebox.monitor.samples import COMPONENT, Sample

log = logging.getLogger(__name__)

# NVML constants (values from nvml.h), used when the module does not carry them
_CONSTANTS = {
    "NVML_TEMPERATURE_GPU": 0,
    "NVML_CLOCK_SM": 1,
    "NVML_CLOCK_MEM": 2,
    "NVML_MEMORY_ERROR_TYPE_CORRECTED": 0,
    "NVML_MEMORY_ERROR_TYPE_UNCORRECTED": 1,
    "NVML_VOLATILE_ECC": 0,
    "NVML_PCIE_UTIL_TX_BYTES": 0,
    "NVML_PCIE_UTIL_RX_BYTES": 1,
}

THROTTLE_IDLE = 0x1
THROTTLE_APP_CLOCKS = 0x2
THROTTLE_DISPLAY_CLOCKS = 0x100
BENIGN_THROTTLE = THROTTLE_IDLE | THROTTLE_APP_CLOCKS | THROTTLE_DISPLAY_CLOCKS
"""Reasons that are settings or idleness, not trouble: everything else (power cap, thermal or
hardware slowdown, power brake, sync boost) counts as throttled."""

THROTTLE_NAMES = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}


def import_nvml() -> ModuleType | None:
    """The ``pynvml`` module, or None when ``nvidia-ml-py`` is not installed."""
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def throttle_reasons(mask: int) -> list[str]:
    """Names of the bits set in an NVML throttle-reason mask."""
    return [name for bit, name in THROTTLE_NAMES.items() if mask & bit]


def _text(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


class GpuCollector:
    """Reads every GPU NVML sees; build it with :meth:`open`."""

    def __init__(self, nvml: Any, handles: list[Any]) -> None:
        self.nvml = nvml
        self.handles = handles
        self.problems: list[str] = []
        """What went wrong in the latest pass (a GPU that stopped answering)."""
        self.names = [_text(self._call("nvmlDeviceGetName", h) or "GPU") for h in handles]
        self.uuids = [_text(self._call("nvmlDeviceGetUUID", h) or "") for h in handles]

    @classmethod
    def open(cls, nvml: Any | None = None) -> GpuCollector | None:
        """Initialise NVML; None when there is no NVML, no driver or no GPU (never raises)."""
        nvml = nvml if nvml is not None else import_nvml()
        if nvml is None:
            return None
        try:
            nvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded...: no GPUs here
            log.debug("NVML unavailable: %s", exc)
            return None
        try:
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        except Exception as exc:
            log.warning("NVML initialised but cannot list GPUs: %s", exc)
            handles = []
        if not handles:
            cls._shutdown(nvml)
            return None
        return cls(nvml, handles)

    @staticmethod
    def _shutdown(nvml: Any) -> None:
        try:
            nvml.nvmlShutdown()
        except Exception:  # shutting down a half-initialised library: nothing left to do
            log.debug("nvmlShutdown failed", exc_info=True)

    def close(self) -> None:
        self._shutdown(self.nvml)

    def _const(self, name: str) -> int:
        return int(getattr(self.nvml, name, _CONSTANTS[name]))

    def _call(self, fn: str, *args: Any) -> Any:
        """Call an NVML function; None when it is missing or refuses (not supported, GPU lost)."""
        f: Callable[..., Any] | None = getattr(self.nvml, fn, None)
        if f is None:
            return None
        try:
            return f(*args)
        except Exception:
            return None

    def versions(self) -> dict[str, str]:
        out = {}
        driver = self._call("nvmlSystemGetDriverVersion")
        if driver is not None:
            out["nvidia_driver"] = _text(driver)
        cuda = self._call("nvmlSystemGetCudaDriverVersion")
        if isinstance(cuda, int) and cuda > 0:
            out["cuda_driver"] = f"{cuda // 1000}.{cuda % 1000 // 10}"
        return out

    def devices(self) -> list[dict[str, Any]]:
        out = []
        for i, h in enumerate(self.handles):
            mem = self._call("nvmlDeviceGetMemoryInfo", h)
            out.append(
                {
                    "index": i,
                    "name": self.names[i],
                    "uuid": self.uuids[i],
                    "memory_bytes": int(mem.total) if mem is not None else None,
                }
            )
        return out

    def collect(self) -> list[Sample]:
        self.problems = []
        out: list[Sample] = []
        for i, h in enumerate(self.handles):
            got = self._device(i, h)
            if not got:
                self.problems.append(f"gpu{i} ({self.names[i]}) does not answer NVML")
            out += got
        return out

    def _device(self, i: int, h: Any) -> list[Sample]:
        res, name = f"gpu{i}", self.names[i]
        values: dict[str, float] = {}
        util = self._call("nvmlDeviceGetUtilizationRates", h)
        if util is not None:
            values["gpu_utilization_ratio"] = util.gpu / 100.0
            values["gpu_memory_utilization_ratio"] = util.memory / 100.0
        mem = self._call("nvmlDeviceGetMemoryInfo", h)
        if mem is not None:
            values["gpu_memory_total_bytes"] = float(mem.total)
            values["gpu_memory_used_bytes"] = float(mem.used)
        temp = self._call("nvmlDeviceGetTemperature", h, self._const("NVML_TEMPERATURE_GPU"))
        if temp is not None:
            values["gpu_temperature_celsius"] = float(temp)
        for metric, fn in (
            ("gpu_power_watts", "nvmlDeviceGetPowerUsage"),
            ("gpu_power_limit_watts", "nvmlDeviceGetEnforcedPowerLimit"),
        ):
            mw = self._call(fn, h)
            if mw is not None:
                values[metric] = mw / 1000.0
        for metric, clock in (
            ("gpu_sm_clock_hertz", "NVML_CLOCK_SM"),
            ("gpu_memory_clock_hertz", "NVML_CLOCK_MEM"),
        ):
            mhz = self._call("nvmlDeviceGetClockInfo", h, self._const(clock))
            if mhz is not None:
                values[metric] = mhz * 1e6
        volatile = self._const("NVML_VOLATILE_ECC")
        for metric, kind in (
            ("gpu_ecc_corrected_errors", "NVML_MEMORY_ERROR_TYPE_CORRECTED"),
            ("gpu_ecc_uncorrected_errors", "NVML_MEMORY_ERROR_TYPE_UNCORRECTED"),
        ):
            n = self._call("nvmlDeviceGetTotalEccErrors", h, self._const(kind), volatile)
            if n is not None:
                values[metric] = float(n)
        for metric, counter in (
            ("gpu_pcie_receive_bytes_per_second", "NVML_PCIE_UTIL_RX_BYTES"),
            ("gpu_pcie_transmit_bytes_per_second", "NVML_PCIE_UTIL_TX_BYTES"),
        ):
            kb = self._call("nvmlDeviceGetPcieThroughput", h, self._const(counter))
            if kb is not None:
                values[metric] = kb * 1024.0  # NVML reports KB/s over a 20 ms window
        mask = self._call("nvmlDeviceGetCurrentClocksEventReasons", h)
        if mask is None:
            mask = self._call("nvmlDeviceGetCurrentClocksThrottleReasons", h)  # before driver 535
        if mask is not None:
            values["gpu_throttle_reasons"] = float(mask)
            values["gpu_throttled"] = 1.0 if int(mask) & ~BENIGN_THROTTLE else 0.0
        return [Sample(COMPONENT, res, metric, v, name=name) for metric, v in values.items()]

    def process_memory(self) -> dict[int, int]:
        """GPU memory held per process id, over every GPU."""
        out: dict[int, int] = {}
        for h in self.handles:
            for p in self._call("nvmlDeviceGetComputeRunningProcesses", h) or ():
                used = getattr(p, "usedGpuMemory", None)  # None where the driver may not tell
                if isinstance(used, int) and used >= 0:
                    out[p.pid] = out.get(p.pid, 0) + used
        return out

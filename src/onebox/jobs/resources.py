"""What a job needs (CPUs, GPUs, memory) and what this machine has.

The local executor starts a job only when its declared resources fit what is free; a request that
could never fit the machine is refused at submit rather than left queued forever.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from onebox.errors import InsufficientResourcesError, InvalidInputError, Problem

FIELDS = ("cpus", "gpus", "memory_mb")


@dataclass(frozen=True)
class Resources:
    """A resource vector. ``cpus`` may be fractional; ``memory_mb`` 0 means "not declared"."""

    cpus: float = 1.0
    gpus: int = 0
    memory_mb: int = 0

    @classmethod
    def parse(cls, value: Resources | dict[str, Any] | None, field: str = "resources") -> Resources:
        """Validate a request from outside (dict from JSON or CLI); every bad field is reported."""
        if value is None:
            return cls()
        if isinstance(value, Resources):
            value = value.as_dict()
        if not isinstance(value, dict):
            raise InvalidInputError(
                f"invalid {field}",
                problems=[Problem(field, f"must be an object with {', '.join(FIELDS)}")],
            )
        problems = [
            Problem(f"{field}.{k}", "unknown resource", f"use one of {', '.join(FIELDS)}")
            for k in value
            if k not in FIELDS
        ]
        cpus = value.get("cpus", 1.0)
        if (
            isinstance(cpus, bool)
            or not isinstance(cpus, int | float)
            or not math.isfinite(cpus)
            or cpus <= 0
        ):
            problems.append(Problem(f"{field}.cpus", f"{cpus!r} is not a positive number"))
        for key in ("gpus", "memory_mb"):
            v = value.get(key, 0)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                problems.append(Problem(f"{field}.{key}", f"{v!r} is not a whole number >= 0"))
        if problems:
            raise InvalidInputError(f"invalid {field}", problems=problems)
        return cls(float(cpus), int(value.get("gpus", 0)), int(value.get("memory_mb", 0)))

    def as_dict(self) -> dict[str, Any]:
        return {"cpus": self.cpus, "gpus": self.gpus, "memory_mb": self.memory_mb}

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpus + other.cpus, self.gpus + other.gpus, self.memory_mb + other.memory_mb)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.cpus - other.cpus, self.gpus - other.gpus, self.memory_mb - other.memory_mb)

    def fits(self, available: Resources) -> bool:
        # A small epsilon so that 0.1 + 0.2 CPUs fit into 0.3.
        return (
            self.cpus <= available.cpus + 1e-9
            and self.gpus <= available.gpus
            and self.memory_mb <= available.memory_mb
        )

    def shortfall(self, available: Resources) -> list[Problem]:
        """Why this request does not fit ``available``, one problem per resource."""
        out = []
        if self.cpus > available.cpus + 1e-9:
            out.append(
                Problem("resources.cpus", f"asks for {self.cpus:g} CPUs; the machine has {available.cpus:g}")
            )
        if self.gpus > available.gpus:
            out.append(
                Problem("resources.gpus", f"asks for {self.gpus} GPUs; the machine has {available.gpus}")
            )
        if self.memory_mb > available.memory_mb:
            out.append(
                Problem(
                    "resources.memory_mb",
                    f"asks for {self.memory_mb} MiB; the machine has {available.memory_mb} MiB",
                )
            )
        return out

    def __str__(self) -> str:
        parts = [f"{self.cpus:g} CPU"]
        if self.gpus:
            parts.append(f"{self.gpus} GPU")
        if self.memory_mb:
            parts.append(f"{self.memory_mb} MiB")
        return ", ".join(parts)


def check_fits_machine(request: Resources, capacity: Resources) -> None:
    """Refuse a request that could never start here, however long it waited."""
    problems = request.shortfall(capacity)
    if problems:
        raise InsufficientResourcesError(
            f"the job needs {request} but this machine has {capacity}; it could never start",
            problems=problems,
        )


def visible_gpu_ids() -> list[str]:
    """Device ids a worker may be given, honouring a CUDA_VISIBLE_DEVICES set for onebox itself."""
    n = _cuda_device_count()
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None and env.strip():
        ids = [d.strip() for d in env.split(",") if d.strip()]
        return ids[:n]
    return [str(i) for i in range(n)]


def _no_nvidia_driver() -> bool:
    """Cheap test (no torch import) that this Linux machine has no NVIDIA GPU at all."""
    if sys.platform != "linux" or "torch" in sys.modules:
        return False
    return not Path("/proc/driver/nvidia/gpus").is_dir() and not any(Path("/dev").glob("nvidia[0-9]*"))


@cache
def _cuda_device_count() -> int:
    if _no_nvidia_driver():
        return 0
    try:
        import torch
    except ImportError:
        return 0
    try:
        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:  # a broken driver means no usable GPU, not a crash of the control process
        return 0


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _memory_mb() -> int:
    import psutil

    return int(psutil.virtual_memory().total // 2**20)


def machine_capacity(*, gpus: bool = True) -> Resources:
    """This machine's CPUs, GPUs and memory. ``gpus=False`` skips the (slow) torch import."""
    return Resources(float(_cpu_count()), len(visible_gpu_ids()) if gpus else 0, _memory_mb())

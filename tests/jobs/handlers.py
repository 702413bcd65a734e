"""Job handlers used only by tests (the worker imports them by path, like any handler)."""

from __future__ import annotations

import os
from typing import Any

from onebox.jobs.context import JobContext


def report_env(ctx: JobContext) -> dict[str, Any]:
    """What the executor gave this worker: visible GPUs and thread count."""
    out: dict[str, Any] = {
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "project": ctx.project,
    }
    if ctx.spec.get("torch"):
        import torch

        out["cuda_device_count"] = torch.cuda.device_count()
    return out

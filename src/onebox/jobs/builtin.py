"""Built-in job handlers. ``sleep`` is a real job for tests and demos of the executor.

It counts steps with a sleep in between, checkpoints its step atomically into the work dir after
every step, resumes from that checkpoint, honours ``should_stop`` and can be told to fail.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from onebox.errors import JobFailedError
from onebox.fsutil import atomic_write_json
from onebox.jobs.context import JobContext

SLEEP_SPEC: dict[str, type | tuple[type, ...]] = {
    "steps": int,
    "sleep": (int, float),
    "fail_at_step": int,
    "fail_times": int,
    "crash_at_step": int,
    "nan_at_step": int,
    "ignore_stop": bool,
    "checkpoint": bool,
}


def _read_step(path: Path) -> int:
    if not path.is_file():
        return 0
    return int(json.loads(path.read_text(encoding="utf-8"))["step"])


def sleep_job(ctx: JobContext) -> dict[str, Any]:
    """Count to ``spec.steps`` (default 10), sleeping ``spec.sleep`` seconds (0.1) per step.

    Spec switches for tests: ``fail_at_step`` raises JobFailedError there (only during the first
    ``fail_times`` runs when given, so a retry can succeed); ``crash_at_step`` raises a plain
    RuntimeError; ``nan_at_step`` reports a NaN loss and fails like a diverged trainer;
    ``ignore_stop`` keeps going after a cancel (to exercise the forced kill); ``checkpoint``
    false turns checkpoints off.
    """
    ctx.validate_spec(SLEEP_SPEC)
    steps = int(ctx.spec.get("steps", 10))
    pause = float(ctx.spec.get("sleep", 0.1))
    use_checkpoints = bool(ctx.spec.get("checkpoint", True))
    ckpt = ctx.work_dir / "sleep_checkpoint.json"
    start = _read_step(ckpt) if use_checkpoints else 0
    if start:
        ctx.log.info("resuming from checkpoint at step %d", start)
    runs_file = ctx.work_dir / "sleep_runs.json"
    runs = (json.loads(runs_file.read_text())["runs"] if runs_file.is_file() else 0) + 1
    atomic_write_json(runs_file, {"runs": runs})
    started = time.time()
    step = start
    stopped = False
    while step < steps:
        if ctx.should_stop() and not ctx.spec.get("ignore_stop"):
            stopped = True
            ctx.log.info("stop requested; leaving at step %d", step)
            break
        time.sleep(pause)
        step += 1
        fail_at, fail_times = ctx.spec.get("fail_at_step"), ctx.spec.get("fail_times")
        if step == fail_at and (fail_times is None or runs <= fail_times):
            raise JobFailedError(f"sleep job told to fail at step {step}")
        if step == ctx.spec.get("crash_at_step"):
            raise RuntimeError(f"sleep job crashed at step {step}")
        loss = float("nan") if step == ctx.spec.get("nan_at_step") else 1.0 / step
        ctx.log_metrics(step, {"loss": loss})
        ctx.progress(step, steps, loss=loss, tokens_per_s=100.0 / max(pause, 1e-3))
        if loss != loss:
            raise JobFailedError(f"loss became NaN at step {step}; lower the learning rate")
        if use_checkpoints:
            atomic_write_json(ckpt, {"step": step})
            ctx.mark_checkpoint(step)
        ctx.log.info("step %d/%d", step, steps)
    return {
        "steps": step,
        "resumed_from": start,
        "stopped": stopped,
        "runs": runs,
        "attempt": ctx.attempt,
        "pid": os.getpid(),
        "started": started,
        "ended": time.time(),
    }

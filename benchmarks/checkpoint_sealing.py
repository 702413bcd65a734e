"""What sealing a training checkpoint costs: ``checkpoint.save``/``load`` plaintext vs sealed.

    .venv/bin/python benchmarks/checkpoint_sealing.py [--mib 64 512] [--repeat 3] [--dir PATH]

Each state is shaped like an SFT checkpoint (trainable weights, AdamW moments, counters) of
about the given size; saves include fsync and the sha256 of the file, loads include verification
(sha256; sealed: authentication and decryption in the same pass). ``--dir`` picks the disk the
checkpoints go to (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from bench_artifacts import timed  # the same median-of-runs timer as the artifact benchmark

from onebox.security.streams import Sealer
from onebox.train import checkpoint as ckpt

MIB = 1024 * 1024


def state_of(mib: int) -> dict[str, Any]:
    """Weights plus two AdamW moments (3 equal parts), in 4 MiB..64 MiB fp32 tensors."""
    per_part = mib * MIB // 3 // 4  # fp32 elements per part
    size = min(16 * MIB, max(MIB, per_part // 8))
    n = max(1, per_part // size)
    weights = {f"layer{i}.lora": torch.randn(size) for i in range(n)}
    opt = {i: {"exp_avg": torch.randn(size), "exp_avg_sq": torch.rand(size), "step": 10} for i in range(n)}
    return {"model": weights, "optimizer": {"state": opt}, "counters": {"step": 10}}


def measure(
    state: dict[str, Any], sealer: Sealer, where: Path, repeat: int
) -> list[tuple[str, float, float]]:
    """(operation, plaintext seconds, sealed seconds) for save and load."""
    roots = {"plain": where / "plain", "sealed": where / "sealed"}

    def save(kind: str) -> None:
        shutil.rmtree(roots[kind], ignore_errors=True)
        ckpt.save(roots[kind], 1, state, {}, sealer if kind == "sealed" else None)

    def load(kind: str) -> None:
        ckpt.load(ckpt.list_valid(roots[kind])[0], sealer if kind == "sealed" else None)

    rows = []
    for op in (save, load):
        plain = timed(lambda op=op: op("plain"), repeat)
        sealed = timed(lambda op=op: op("sealed"), repeat)
        rows.append((op.__name__, plain, sealed))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, nargs="+", default=[64, 512])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", type=Path)
    args = ap.parse_args()
    sealer = Sealer(os.urandom(32), "job-bench")
    print(f"median of {args.repeat} runs; sealed = AES-256-GCM, 1 MiB chunks")
    print(f"{'state':>8} {'operation':<12}{'plain s':>10}{'sealed s':>10}{'overhead':>10}")
    for mib in args.mib:
        state = state_of(mib)
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            rows = measure(state, sealer, Path(tmp), args.repeat)
            real = ckpt.dir_bytes(Path(tmp) / "plain") / MIB
        for name, plain, sealed in rows:
            print(f"{real:>6.0f}Mi {name:<12}{plain:>10.3f}{sealed:>10.3f}{(sealed / plain - 1):>+10.0%}")


if __name__ == "__main__":
    main()

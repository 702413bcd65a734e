"""Artifact store throughput against the plain-file baseline, measured side by side.

    .venv/bin/python benchmarks/bench_artifacts.py [--mib 256] [--repeat 3]

Prints medians of: copying the file with shutil.copyfile (baseline: what storing costs with no
hashing or atomicity), put_file of a new blob (hash + write + fsync + rename), put_file of a blob
already stored (hash and verify), a verified read, and a verified checkout (a copy).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from onebox.store.backends import LocalBackend
from onebox.store.blobs import BlobStore


def timed(fn: Callable[[], object], repeat: int, setup: Callable[[], object] = lambda: None) -> float:
    runs = []
    for _ in range(repeat):
        setup()
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        src = root / "weights.bin"
        with src.open("wb") as fh:
            for _ in range(args.mib):
                fh.write(os.urandom(1024 * 1024))
        tree = root / "tree"
        tree.mkdir()
        os.link(src, tree / "model.safetensors")
        store_root = root / "store"

        def fresh() -> None:
            shutil.rmtree(store_root, ignore_errors=True)

        def store() -> BlobStore:
            return BlobStore(LocalBackend(store_root / "a"), store_root / "co")

        size = src.stat().st_size / 2**20
        base = timed(lambda: shutil.copyfile(src, root / "copy.bin"), args.repeat)
        put_new = timed(lambda: store().put_file(src), args.repeat, setup=fresh)
        s = store()
        info = s.put_file(src)
        put_dup = timed(lambda: s.put_file(src), args.repeat)
        read = timed(lambda: s.read_bytes(info.digest), args.repeat)
        mblob, _ = s.put_tree(tree)
        checkout = timed(
            lambda: s.checkout(mblob.digest),
            args.repeat,
            setup=lambda: shutil.rmtree(s.checkout_root, ignore_errors=True),
        )

        print(f"file size: {size:.0f} MiB, median of {args.repeat}")
        print(f"{'operation':38} {'seconds':>8} {'MiB/s':>8} {'vs copyfile':>12}")
        for name, sec in [
            ("baseline: shutil.copyfile", base),
            ("put_file, new blob (hash+write+fsync)", put_new),
            ("put_file, already stored (hash+verify)", put_dup),
            ("read_bytes, verified", read),
            ("checkout, verified copy", checkout),
        ]:
            print(f"{name:38} {sec:8.3f} {size / sec:8.0f} {sec / base:11.2f}x")


if __name__ == "__main__":
    main()

"""Training checkpoints: atomic, verified, pruned to the last K, and sized.

A checkpoint is a folder ``checkpoints/step-000123/`` holding ``state.pt`` (trainable weights,
optimizer, scheduler, scaler, the RNG state of every process, counters) and ``meta.json`` (step,
config and data fingerprints, sha256 and size of each file). It is written under a temporary name,
fsynced, and renamed into place, so a crash leaves either the whole checkpoint or none; a folder
without a valid ``meta.json`` or with a file of the wrong size is ignored, and a hash mismatch at
load time falls back to the previous checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from onebox.errors import ArtifactCorruptedError
from onebox.fsutil import fsync_path

FORMAT = "onebox.sft-checkpoint/1"
_NAME = re.compile(r"^step-(\d{6,})$")


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    path: Path
    meta: dict[str, Any]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dir_bytes(path: Path) -> int:
    """Bytes of all files under ``path`` (0 if it does not exist)."""
    if not path.exists():
        return 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def save(root: Path, step: int, state: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically and return its folder."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-step-{step:06d}-", dir=root))
    try:
        state_path = tmp / "state.pt"
        torch.save(state, state_path)
        fsync_path(state_path)
        files = {"state.pt": {"bytes": state_path.stat().st_size, "sha256": _sha256(state_path)}}
        full_meta = {"format": FORMAT, "step": step, "complete": True, "files": files, **meta}
        meta_path = tmp / "meta.json"
        meta_path.write_text(json.dumps(full_meta, indent=2, sort_keys=True))
        fsync_path(meta_path)
        fsync_path(tmp)
        if final.exists():  # a stale copy of the same step (e.g. re-saved after a crash)
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_path(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("complete") is not True:
        return None
    files = meta.get("files")
    if not isinstance(files, dict) or "state.pt" not in files:
        return None
    for name, info in files.items():
        f = path / name
        if not f.is_file() or f.stat().st_size != info.get("bytes"):
            return None
    return meta


def list_valid(root: Path) -> list[CheckpointInfo]:
    """Complete checkpoints under ``root``, oldest first (hashes are checked at load time)."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _NAME.match(child.name)
        if not m or not child.is_dir():
            continue
        meta = _read_meta(child)
        if meta is not None and meta.get("step") == int(m.group(1)):
            found.append(CheckpointInfo(int(m.group(1)), child, meta))
    return sorted(found, key=lambda c: c.step)


def load(info: CheckpointInfo) -> dict[str, Any]:
    """Load a checkpoint's state after verifying its hash (raises ArtifactCorruptedError)."""
    expected = info.meta["files"]["state.pt"]["sha256"]
    path = info.path / "state.pt"
    if _sha256(path) != expected:
        raise ArtifactCorruptedError(f"checkpoint {info.path.name} is corrupted (sha256 mismatch)")
    return torch.load(path, map_location="cpu", weights_only=True)


def prune(root: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` valid checkpoints, and leftovers of crashed saves."""
    removed = []
    valid = list_valid(root)
    for info in valid[: max(0, len(valid) - keep_last)]:
        shutil.rmtree(info.path, ignore_errors=True)
        removed.append(info.path)
    keep = {c.path.name for c in valid[-keep_last:]}
    if root.is_dir():
        for child in root.iterdir():
            if child.name.startswith(".tmp-step-") or (_NAME.match(child.name) and child.name not in keep):
                with contextlib.suppress(OSError):
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
                removed.append(child)
    return removed

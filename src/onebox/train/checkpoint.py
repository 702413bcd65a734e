"""Training checkpoints: atomic, verified, pruned to the last K, and sized.

A checkpoint is a folder ``checkpoints/step-000123/`` holding ``state.pt`` (trainable weights,
optimizer, scheduler, scaler, the RNG state of every process, counters) and ``meta.json`` (step,
config and data fingerprints, sha256 and size of each file). It is written under a temporary name,
fsynced, and renamed into place, so a crash leaves either the whole checkpoint or none; a folder
without a valid ``meta.json`` or with a file of the wrong size is ignored, and a hash mismatch at
load time falls back to the previous checkpoint.

With a :class:`~onebox.security.streams.Sealer` (encryption at rest) ``state.pt`` is sealed:
``torch.save`` streams into AES-256-GCM chunks bound to the job's key and to
``step-NNNNNN/state.pt``, so no plaintext tensor bytes reach the disk, and a changed, truncated or
swapped-in file fails authentication at load (:class:`TamperedError`, handled like a corrupted
checkpoint). ``meta.json`` stays plaintext: it holds the step, hashes of config values and token
ids, and sizes, nothing of the data or weights; its sha256 and size are those of the sealed file.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import queue
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import torch

from onebox.errors import ArtifactCorruptedError, ConfigError, Problem, TamperedError
from onebox.fsutil import atomic_write_chunks, fsync_path
from onebox.security.streams import Sealer, is_sealed_file

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


def _sealed_name(folder: str) -> str:
    """What a sealed ``state.pt`` is bound to: its step folder, so one step's file copied over
    another's fails authentication."""
    return f"{folder}/state.pt"


class _Pipe:
    """A write-only file for ``torch.save`` that hands each write to a bounded queue."""

    def __init__(self, q: queue.Queue[Any], cancelled: threading.Event) -> None:
        self.q = q
        self.cancelled = cancelled

    def write(self, data: bytes) -> int:
        if self.cancelled.is_set():
            raise OSError("the sealed checkpoint write was abandoned")
        self.q.put(bytes(data))  # torch may reuse its buffer after write returns
        return len(data)

    def flush(self) -> None:
        pass


def _save_sealed(state: dict[str, Any], path: Path, sealer: Sealer, name: str) -> str:
    """``torch.save`` streamed through ``sealer`` into ``path``; returns the sealed file's sha256.

    torch serialises in a thread while this one seals and writes, so memory holds a few of its
    writes (at most the largest tensor each) instead of a second copy of the whole state.
    """
    q: queue.Queue[Any] = queue.Queue(maxsize=4)
    cancelled = threading.Event()
    done = object()

    def produce() -> None:
        try:
            torch.save(state, _Pipe(q, cancelled))
            q.put(done)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            q.put(exc)

    def plaintext() -> Iterator[bytes]:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item

    digest = hashlib.sha256()

    def hashed(chunks: Iterator[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            digest.update(chunk)
            yield chunk

    producer = threading.Thread(target=produce, name="checkpoint-serialise", daemon=True)
    producer.start()
    try:
        atomic_write_chunks(path, hashed(sealer.seal(plaintext(), name)))
    finally:
        cancelled.set()
        while producer.is_alive():  # unblock a producer stuck on a full queue after a failure
            with contextlib.suppress(queue.Empty):
                q.get(timeout=0.05)
        producer.join()
    return digest.hexdigest()


def save(
    root: Path, step: int, state: dict[str, Any], meta: dict[str, Any], sealer: Sealer | None = None
) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically and return its folder; with ``sealer``
    the state is sealed (see the module docstring)."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-step-{step:06d}-", dir=root))
    try:
        state_path = tmp / "state.pt"
        if sealer is None:
            torch.save(state, state_path)
            fsync_path(state_path)
            sha = _sha256(state_path)
        else:
            sha = _save_sealed(state, state_path, sealer, _sealed_name(final.name))
        info: dict[str, Any] = {"bytes": state_path.stat().st_size, "sha256": sha}
        if sealer is not None:
            info["sealed"] = True  # informational: load() decides by the file's header
        files = {"state.pt": info}
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


class _HashingReader:
    """Reads a file while hashing what was read (one pass for the hash and the decryption)."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.digest = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        self.digest.update(data)
        return data


def load(info: CheckpointInfo, sealer: Sealer | None = None) -> dict[str, Any]:
    """Load a checkpoint's state after verifying it.

    Raises ArtifactCorruptedError on a hash mismatch and TamperedError when a sealed state fails
    authentication, or when ``sealer`` is given and the state is plaintext (a job that seals never
    wrote it: it may have been put there to inject weights). A sealed state without ``sealer``
    is a ConfigError, not a fallback: the checkpoint is fine, the caller lacks the key.
    """
    expected = info.meta["files"]["state.pt"]["sha256"]
    path = info.path / "state.pt"
    sealed = is_sealed_file(path)
    if sealer is None and sealed:
        raise ConfigError(
            f"checkpoint {info.path.name} is sealed (encryption at rest) and no key was given",
            problems=[Problem("sealer", "missing", "resume through the job, which holds the key")],
        )
    if sealer is None:
        if _sha256(path) != expected:
            raise ArtifactCorruptedError(f"checkpoint {info.path.name} is corrupted (sha256 mismatch)")
        return torch.load(path, map_location="cpu", weights_only=True)
    if not sealed:
        raise TamperedError(
            f"checkpoint {info.path.name} is plaintext but this run seals its checkpoints; refusing it",
            file=str(path),
        )
    plain = io.BytesIO()
    with open(path, "rb") as fh:
        reader = _HashingReader(fh)
        for chunk in sealer.open(cast(IO[bytes], reader), _sealed_name(info.path.name)):
            plain.write(chunk)
    if reader.digest.hexdigest() != expected:  # authentic, yet not what meta.json recorded
        raise ArtifactCorruptedError(f"checkpoint {info.path.name} does not match its meta.json (sha256)")
    plain.seek(0)
    return torch.load(plain, map_location="cpu", weights_only=True)


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

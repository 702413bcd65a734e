"""Keeping decrypted artifacts off the disk: a private memory-backed folder and sealed pointers.

With encryption at rest on, two things replace plaintext files under ``ONEBOX_HOME``:

* :func:`private_dir`: a per-process folder on a memory filesystem (``/dev/shm``, else
  ``$XDG_RUNTIME_DIR``), mode 0700, removed when the process exits (and, for processes that were
  killed, by the next process that starts one). Code that needs real files (transformers,
  tokenizers) reads checkouts from here.
* *sealed pointers*: a tiny file standing in for a large one (weights, Parquet shards) that names
  the blob by digest instead of holding its bytes. Readers that know about them (the engine's
  weight loader, the dataset reader) call :func:`read_pointer` and get the verified plaintext
  in memory through the process's blob store; nothing plaintext is written anywhere. A pointer
  is useless without the store and its master key, so it may live on disk (job folders).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from onebox.errors import ConfigError, Problem

POINTER_MAGIC = b"ONEBOX-SEALED-POINTER\n"
_POINTER_MAX = 4096
_reader: Callable[[str], bytes] | None = None
_private: Path | None = None
_owner = 0
_lock = threading.Lock()


def set_reader(reader: Callable[[str], bytes]) -> None:
    """Install the function that turns a blob digest into verified plaintext (the blob store's)."""
    global _reader
    _reader = reader


def write_pointer(path: Path, digest: str, size: int) -> None:
    path.write_bytes(POINTER_MAGIC + json.dumps({"digest": digest, "size": size}).encode())


def pointer_digest(path: Path) -> str | None:
    """The digest a sealed pointer names, or None when ``path`` is an ordinary file."""
    try:
        if Path(path).stat().st_size > _POINTER_MAX:
            return None
        with open(path, "rb") as fh:
            data = fh.read(_POINTER_MAX)
    except OSError:
        return None
    if not data.startswith(POINTER_MAGIC):
        return None
    return str(json.loads(data[len(POINTER_MAGIC) :])["digest"])


def read_pointer(path: Path) -> bytes | None:
    """The plaintext a sealed pointer stands for (verified, in memory), or None for a plain file."""
    digest = pointer_digest(path)
    if digest is None:
        return None
    if _reader is None:
        raise ConfigError(
            f"{path} is a sealed pointer but this process has no encrypted artifact store open",
            problems=[Problem("ONEBOX_ENCRYPT_ARTIFACTS", "no store", "open the app (open_app) first")],
        )
    return _reader(digest)


def _memory_root() -> Path:
    for candidate in (Path("/dev/shm"), Path(os.environ.get("XDG_RUNTIME_DIR") or "/nonexistent")):
        if candidate.is_dir() and os.access(candidate, os.W_OK | os.X_OK):
            return candidate
    raise ConfigError(
        "no memory-backed folder (/dev/shm or $XDG_RUNTIME_DIR) to hold decrypted model files",
        problems=[
            Problem(
                "XDG_RUNTIME_DIR",
                "not set or not writable",
                "set it to a tmpfs folder owned by this user",
            )
        ],
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep(root: Path) -> None:
    """Remove folders of this user's processes that died without cleaning up."""
    prefix = f"onebox-{os.getuid()}-"
    for d in root.glob(prefix + "*"):
        pid = d.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)


def private_dir() -> Path:
    """This process's private memory-backed folder (0700), created on first use."""
    global _private, _owner
    with _lock:
        if _private is None or _owner != os.getpid() or not _private.is_dir():
            root = _memory_root()
            with contextlib.suppress(OSError):
                _sweep(root)
            _private = Path(tempfile.mkdtemp(dir=root, prefix=f"onebox-{os.getuid()}-{os.getpid()}-"))
            _owner = os.getpid()
            os.chmod(_private, 0o700)
            atexit.register(_remove, _private, _owner)
        return _private


def _remove(path: Path, owner: int) -> None:
    if os.getpid() == owner:  # a forked child must not delete its parent's folder
        shutil.rmtree(path, ignore_errors=True)

"""Where blob bytes physically live: a local folder now, any fsspec filesystem for clusters.

Backends store opaque bytes under keys and know nothing of digests, encryption or the
database; :mod:`onebox.store.blobs` builds content addressing and verification on top.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from onebox.errors import ArtifactMissingError, DependencyMissingError, Problem
from onebox.fsutil import fsync_path


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    mtime: float


class BlobBackend(ABC):
    """Key/value storage of immutable objects with atomic publication."""

    url: str

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def open_read(self, key: str) -> IO[bytes]:
        """Open for streaming reads; raises ArtifactMissingError when absent."""

    @abstractmethod
    def write_atomic(
        self, key: str, chunks: Iterable[bytes], before_publish: Callable[[], None] | None = None
    ) -> int:
        """Write all chunks so that readers see either nothing or the whole object.

        ``before_publish`` runs after the last chunk and before the object becomes visible;
        raising from it abandons the write."""

    @abstractmethod
    def touch(self, key: str) -> None:
        """Mark the object as just used (its modification time is gc's clock)."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def list(self) -> Iterator[StoredObject]: ...

    def local_path(self, key: str) -> Path | None:
        """A filesystem path to the object when it has one (enables hard-linking)."""
        return None


class LocalBackend(BlobBackend):
    """Objects as read-only files under ``root/objects/ab/cdef...``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.url = str(self.root)
        self.objects = self.root / "objects"
        self.tmp = self.root / "tmp"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.objects / key[:2] / key[2:]

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def open_read(self, key: str) -> IO[bytes]:
        try:
            return self._path(key).open("rb")
        except FileNotFoundError as exc:
            raise ArtifactMissingError(f"blob {key} is missing from {self.root}", digest=key) from exc

    def write_atomic(
        self, key: str, chunks: Iterable[bytes], before_publish: Callable[[], None] | None = None
    ) -> int:
        final = self._path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp, prefix="put-")
        size = 0
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in chunks:
                    fh.write(chunk)
                    size += len(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            if before_publish is not None:
                before_publish()
            os.chmod(tmp_name, 0o444)
            os.replace(tmp_name, final)
            fsync_path(final.parent)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise
        return size

    def touch(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.utime(self._path(key))

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def list(self) -> Iterator[StoredObject]:
        for sub in sorted(self.objects.iterdir()):
            if not sub.is_dir():
                continue
            for f in sorted(sub.iterdir()):
                st = f.stat()
                yield StoredObject(sub.name + f.name, st.st_size, st.st_mtime)

    def local_path(self, key: str) -> Path | None:
        p = self._path(key)
        return p if p.is_file() else None

    def clean_tmp(self, older_than: float) -> int:
        """Remove temp files left by writers that crashed; returns how many."""
        removed = 0
        cutoff = time.time() - older_than
        for f in self.tmp.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if f.stat().st_mtime < cutoff:
                    f.unlink()
                    removed += 1
        return removed


class FsspecBackend(BlobBackend):
    """Objects on any fsspec filesystem (``s3://``, ``file://``, ``memory://``...).

    Writes go to a unique temporary key and are then moved into place; on object stores a
    single PUT is already atomic, so readers never see a partial object.
    """

    def __init__(self, url: str, **storage_options: Any) -> None:
        try:
            import fsspec
        except ImportError as exc:  # pragma: no cover - fsspec is a core dependency
            raise DependencyMissingError(
                "fsspec is required for remote artifacts: pip install fsspec"
            ) from exc
        try:
            self.fs, root = fsspec.core.url_to_fs(url, **storage_options)
        except (ImportError, ValueError) as exc:
            raise DependencyMissingError(
                f"cannot open artifact store {url!r}: {exc}",
                problems=[Problem("ONEBOX_ARTIFACTS", str(exc), "install the fsspec driver (e.g. s3fs)")],
            ) from exc
        self.url = url
        self.root = root.rstrip("/")
        self.fs.makedirs(f"{self.root}/objects", exist_ok=True)
        self.fs.makedirs(f"{self.root}/tmp", exist_ok=True)

    def _path(self, key: str) -> str:
        return f"{self.root}/objects/{key[:2]}/{key[2:]}"

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._path(key)))

    def open_read(self, key: str) -> IO[bytes]:
        try:
            return self.fs.open(self._path(key), "rb")
        except FileNotFoundError as exc:
            raise ArtifactMissingError(f"blob {key} is missing from {self.url}", digest=key) from exc

    def write_atomic(
        self, key: str, chunks: Iterable[bytes], before_publish: Callable[[], None] | None = None
    ) -> int:
        tmp = f"{self.root}/tmp/{uuid.uuid4().hex}"
        size = 0
        try:
            with self.fs.open(tmp, "wb") as fh:
                for chunk in chunks:
                    fh.write(chunk)
                    size += len(chunk)
            if before_publish is not None:
                before_publish()
            self.fs.makedirs(self._path(key).rsplit("/", 1)[0], exist_ok=True)
            self.fs.mv(tmp, self._path(key))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(tmp)
            raise
        return size

    def touch(self, key: str) -> None:
        # Object stores cannot change a modification time in place; a copy onto itself can.
        with contextlib.suppress(Exception):
            self.fs.touch(self._path(key), truncate=False)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self._path(key))

    def list(self) -> Iterator[StoredObject]:
        base = f"{self.root}/objects/"
        for path, info in sorted(self.fs.find(f"{self.root}/objects", detail=True).items()):
            rel = path.split(base, 1)[-1].replace("/", "")
            mtime = info.get("mtime") or info.get("LastModified") or info.get("created") or 0
            if hasattr(mtime, "timestamp"):
                mtime = mtime.timestamp()
            yield StoredObject(rel, int(info.get("size") or 0), float(mtime))

    def local_path(self, key: str) -> Path | None:
        if getattr(self.fs, "protocol", None) in ("file", ("file", "local")):
            p = Path(self._path(key))
            return p if p.is_file() else None
        return None


def backend_from_url(url: str) -> BlobBackend:
    """A plain path (or ``file://`` URL) gives the local backend; other URLs use fsspec."""
    if "://" not in url:
        return LocalBackend(Path(url).expanduser())
    if url.startswith("file://"):
        return LocalBackend(Path(url[len("file://") :]))
    return FsspecBackend(url)

"""Content-addressed blobs (sha256 of the plaintext) with verification on every read.

A blob is never handed out unverified: ``read_bytes`` hashes what it read before returning it,
and ``checkout`` builds a directory in a temporary place, verifies every file, and only then
publishes it with one rename. Directory trees (model versions, dataset versions) are stored as
one blob per file plus a JSON *manifest* blob naming them; the manifest digest is the tree's id.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onebox.errors import ArtifactCorruptedError, ArtifactMissingError, InvalidInputError
from onebox.progress import ProgressFn, null_progress
from onebox.store.backends import BlobBackend
from onebox.store.codec import CHUNK, BlobCodec, PlainCodec

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".parquet")
"""Files a checkout with ``weights_in_memory`` leaves sealed when the store is encrypted."""

MANIFEST_VERSION = 1
SKIP_DIRS = frozenset({".git", ".hg", ".svn", ".cache", "__pycache__"})


@dataclass(frozen=True)
class BlobInfo:
    digest: str
    size: int


@dataclass(frozen=True)
class ManifestEntry:
    path: str
    digest: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """The files of a stored tree, sorted by path."""

    files: tuple[ManifestEntry, ...]

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> bytes:
        doc = {
            "manifest_version": MANIFEST_VERSION,
            "files": [{"path": f.path, "digest": f.digest, "size": f.size} for f in self.files],
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        doc = json.loads(data)
        return cls(tuple(ManifestEntry(f["path"], f["digest"], int(f["size"])) for f in doc["files"]))

    def digests(self) -> list[str]:
        return [f.digest for f in self.files]

    def entry(self, path: str) -> ManifestEntry:
        for f in self.files:
            if f.path == path:
                return f
        raise KeyError(path)


def sha256_file(path: Path, progress: ProgressFn = null_progress, stage: str = "hash") -> BlobInfo:
    h = hashlib.sha256()
    size = 0
    total = path.stat().st_size
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
            progress(stage, size, total)
    return BlobInfo(h.hexdigest(), size)


def _read_file(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            yield chunk


class BlobStore:
    """Puts and gets verified blobs on a backend through a codec (the encryption seam)."""

    def __init__(self, backend: BlobBackend, checkout_root: Path, codec: BlobCodec | None = None) -> None:
        self.backend = backend
        self.codec: BlobCodec = codec or PlainCodec()
        self.checkout_root = Path(checkout_root)
        if not self.codec.transparent:
            from onebox.security import sealed

            sealed.set_reader(self.read_bytes)  # sealed pointers in this process decrypt through us

    @property
    def private(self) -> bool:
        """True when stored bytes are not the plaintext (encryption): nothing plaintext may be
        written under the home folder, so checkouts go to a private memory-backed folder."""
        return not self.codec.transparent

    # -- writing -------------------------------------------------------------------------------
    def put_file(self, path: Path, progress: ProgressFn = null_progress) -> BlobInfo:
        """Store a file. A blob already present is reused (and refreshed for gc) if it verifies;
        a damaged copy is rewritten, so storing good content again repairs the store."""
        path = Path(path)
        info = sha256_file(path, progress)
        if self._reusable(info):
            return info

        hasher = hashlib.sha256()

        def chunks() -> Iterator[bytes]:
            for chunk in _read_file(path):
                hasher.update(chunk)
                yield chunk

        def unchanged() -> None:
            # The file was hashed in one pass and copied in a second; if it changed in between,
            # the bytes would not match their address, so nothing is published.
            if hasher.hexdigest() != info.digest:
                raise InvalidInputError(f"{path} changed while it was being stored; try again")

        encoded = self.codec.encode(info.digest, chunks())
        self.backend.write_atomic(info.digest, encoded, before_publish=unchanged)
        return info

    def put_bytes(self, data: bytes) -> BlobInfo:
        info = BlobInfo(hashlib.sha256(data).hexdigest(), len(data))
        if not self._reusable(info):
            self.backend.write_atomic(info.digest, self.codec.encode(info.digest, [data]))
        return info

    def _reusable(self, info: BlobInfo) -> bool:
        if not self.backend.exists(info.digest):
            return False
        try:
            self.verify(info.digest)
        except ArtifactCorruptedError:
            return False
        self.backend.touch(info.digest)  # gc's grace period counts from the last use
        return True

    def put_json(self, obj: Any) -> BlobInfo:
        return self.put_bytes(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode())

    def put_tree(self, root: Path, progress: ProgressFn = null_progress) -> tuple[BlobInfo, Manifest]:
        """Store every file under ``root`` (symlinks followed, as in Hugging Face cache snapshots;
        VCS and cache folders skipped) and a manifest; returns the manifest blob."""
        root = Path(root)
        files = []
        for p in sorted(root.rglob("*")):
            rel = p.relative_to(root)
            if any(part in SKIP_DIRS for part in rel.parts[:-1]) or p.is_dir():
                continue
            if not p.exists():
                raise InvalidInputError(f"{p} is a broken symbolic link")
            files.append(p)
        if not files:
            raise InvalidInputError(f"{root} contains no files to store")
        total = sum(p.stat().st_size for p in files)
        done = 0
        entries = []
        for p in files:
            size = p.stat().st_size

            def sub(stage: str, n: int, _t: int | None, base: int = done) -> None:
                progress("store", base + n, total)

            info = self.put_file(p, sub)
            done += size
            entries.append(ManifestEntry(p.relative_to(root).as_posix(), info.digest, info.size))
        manifest = Manifest(tuple(entries))
        return self.put_bytes(manifest.to_json()), manifest

    # -- reading -------------------------------------------------------------------------------
    def read_chunks(self, digest: str) -> Iterator[bytes]:
        """Yield plaintext; raises ArtifactCorruptedError after the last chunk if it mismatches.

        Callers must not act on the data before the iterator is exhausted.
        """
        h = hashlib.sha256()
        try:
            stream = self.backend.open_read(digest)
        except FileNotFoundError as exc:
            raise ArtifactMissingError(f"blob {digest} is missing", digest=digest) from exc
        with stream:
            for chunk in self.codec.decode(digest, stream):
                h.update(chunk)
                yield chunk
        if h.hexdigest() != digest:
            raise ArtifactCorruptedError(
                f"blob {digest[:12]}… is corrupted: its content hashes to {h.hexdigest()[:12]}…; "
                "restore it from a backup or re-register the resource",
                digest=digest,
                actual=h.hexdigest(),
            )

    def read_bytes(self, digest: str) -> bytes:
        return b"".join(self.read_chunks(digest))

    def read_json(self, digest: str) -> Any:
        return json.loads(self.read_bytes(digest))

    def read_manifest(self, digest: str) -> Manifest:
        return Manifest.from_json(self.read_bytes(digest))

    def verify(self, digest: str) -> None:
        for _ in self.read_chunks(digest):
            pass

    def exists(self, digest: str) -> bool:
        return self.backend.exists(digest)

    def export_file(self, digest: str, dest: Path) -> None:
        """Write a verified copy to ``dest`` atomically (temp file then rename)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in self.read_chunks(digest):
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def materialize(self, digest: str, dest: Path) -> Path:
        """Give a reader in this process ``dest`` to open: a verified copy for a plaintext store; a
        sealed pointer (decrypted in memory by its reader) when the store is encrypted."""
        if not self.private:
            self.export_file(digest, dest)
            return dest
        from onebox.security import sealed

        if not self.exists(digest):
            raise ArtifactMissingError(f"blob {digest} is missing", digest=digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        sealed.write_pointer(dest, digest, -1)
        return dest

    def checkout(
        self,
        manifest_digest: str,
        *,
        verify_existing: bool = True,
        progress: ProgressFn = null_progress,
        weights_in_memory: bool = False,
    ) -> Path:
        """Materialise a stored tree as a read-only directory (cached by manifest digest).

        With an encrypted store the directory lies in this process's private memory-backed folder
        (never under the home folder), and with ``weights_in_memory`` its weight and Parquet files
        are sealed pointers that the engine and dataset readers decrypt straight into memory.
        """
        root = self.checkout_root
        sealed_suffixes: tuple[str, ...] = ()
        name = manifest_digest
        if self.private:
            from onebox.security.sealed import private_dir

            root = private_dir() / "checkouts"
            if weights_in_memory:
                sealed_suffixes = WEIGHT_SUFFIXES
                name = f"{manifest_digest}-sealed"
        final = root / name
        manifest = self.read_manifest(manifest_digest)
        if final.is_dir():
            if not verify_existing:
                return final
            try:
                self._verify_dir(final, manifest)
                return final
            except ArtifactCorruptedError:
                shutil.rmtree(final, ignore_errors=True)  # rebuilt below from verified blobs
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{manifest_digest[:12]}-"))
        try:
            done = 0
            for entry in manifest.files:
                dest = tmp / entry.path
                dest.parent.mkdir(parents=True, exist_ok=True)
                if entry.path.endswith(sealed_suffixes):  # () matches nothing
                    self.materialize(entry.digest, dest)
                else:
                    # A copy, never a hard link: a process writing into a checkout must not be
                    # able to damage the only stored copy of a blob.
                    self.export_file(entry.digest, dest)
                done += entry.size
                progress("checkout", done, manifest.total_size)
            try:
                os.replace(tmp, final)
            except OSError:  # another process published the same checkout first
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def _verify_dir(self, root: Path, manifest: Manifest) -> None:
        for entry in manifest.files:
            p = root / entry.path
            if self.private:
                from onebox.security.sealed import pointer_digest

                if pointer_digest(p) == entry.digest:
                    continue
            if not p.is_file() or sha256_file(p).digest != entry.digest:
                raise ArtifactCorruptedError(f"checkout {root} differs from its manifest at {entry.path}")

    def delete(self, digests: Iterable[str]) -> None:
        for d in digests:
            self.backend.delete(d)

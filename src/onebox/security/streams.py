"""Chunked AES-256-GCM: the one stream construction every encrypted onebox file uses.

A plaintext is cut into ``chunk_size`` pieces; piece *i* is sealed with the nonce
``prefix (8 random bytes) || i (u32 big-endian)`` and the associated data
``bound || i (u64) || final flag``. ``bound`` carries everything the ciphertext must stay
attached to (its header and what it is: a blob digest, a file's name), so changed bytes,
reordered, dropped or appended chunks, truncation at a chunk boundary and a file moved to
another name all fail a tag. Chunks are authenticated one at a time, so large files stream.

Two containers use it: blobs in the artifact store (:mod:`onebox.security.envelope`, per-blob
data keys) and :class:`Sealer` files (checkpoints, knowledge-base sources, index caches), sealed
under a named data key (:mod:`onebox.security.datakeys`) and written atomically.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from onebox.errors import TamperedError

TAG_BYTES = 16
DEFAULT_CHUNK = 1024 * 1024
SEALED_MAGIC = b"OBXSEAL\x01"
_SEALED_HEADER = struct.Struct(">8sBBHI8s")  # magic | version | alg | reserved | chunk | prefix
_ALG_AES256_GCM = 1


def aead(key: bytes) -> Any:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


def nonce(prefix: bytes, index: int) -> bytes:
    if index >= 1 << 32:
        raise ValueError("stream too large for one nonce prefix")
    return prefix + index.to_bytes(4, "big")


def aad(bound: bytes, index: int, final: bool) -> bytes:
    return bound + struct.pack(">QB", index, 1 if final else 0)


def read_exact(stream: IO[bytes], n: int) -> bytes:
    parts = []
    while n > 0:
        b = stream.read(n)
        if not b:
            break
        parts.append(b)
        n -= len(b)
    return b"".join(parts)


def seal_chunks(aes: Any, prefix: bytes, bound: bytes, chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """Encrypt a plaintext given as arbitrary pieces into fixed-size sealed chunks."""
    index = 0
    rest = b""
    for chunk in chunks:
        data = rest + chunk if rest else chunk
        view = memoryview(data)
        off = 0
        while len(data) - off > size:  # strictly more: a later chunk exists, so not final
            yield aes.encrypt(nonce(prefix, index), view[off : off + size], aad(bound, index, False))
            off += size
            index += 1
        rest = bytes(view[off:])
    yield aes.encrypt(nonce(prefix, index), rest, aad(bound, index, True))


def open_chunks(
    aes: Any,
    prefix: bytes,
    bound: bytes,
    stream: IO[bytes],
    size: int,
    failure: Callable[[int, str], TamperedError],
) -> Iterator[bytes]:
    """Decrypt and authenticate chunk by chunk; ``failure(index, why)`` builds the error."""
    from cryptography.exceptions import InvalidTag

    block = size + TAG_BYTES
    index = 0
    current = read_exact(stream, block)
    while True:
        following = read_exact(stream, block)
        final = not following
        if len(current) < TAG_BYTES:
            raise failure(index, "it is truncated")
        try:
            yield aes.decrypt(nonce(prefix, index), current, aad(bound, index, final))
        except InvalidTag as exc:
            raise failure(index, _diagnose(aes, prefix, bound, index, current, final)) from exc
        if final:
            return
        current = following
        index += 1


def _diagnose(aes: Any, prefix: bytes, bound: bytes, index: int, data: bytes, final: bool) -> str:
    """Say what happened when a cheap second check can tell (cut short or extended)."""
    from cryptography.exceptions import InvalidTag

    try:
        aes.decrypt(nonce(prefix, index), data, aad(bound, index, not final))
    except InvalidTag:
        return "the ciphertext or its header was modified, or chunks were reordered"
    if final:
        return "it was truncated after this chunk"
    return "bytes were appended after the final chunk"


def is_sealed_file(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(len(SEALED_MAGIC)) == SEALED_MAGIC
    except OSError:
        return False


@dataclass(frozen=True)
class Sealer:
    """Seals and opens files under one named data key.

    ``scope`` names what the key protects (``kb-<id>``, ``job-<id>``); each file is also bound
    to its ``name`` (a path relative to the scope), so a sealed file copied over another of the
    same scope is detected. Picklable, so a worker process can be handed one through a pipe; the
    key never appears in its repr.
    """

    key: bytes = field(repr=False)
    scope: str
    chunk_size: int = DEFAULT_CHUNK

    def _bound(self, header: bytes, name: str) -> bytes:
        return header + f"{self.scope}/{name}".encode()

    def seal(self, chunks: Iterable[bytes], name: str) -> Iterator[bytes]:
        prefix = os.urandom(8)
        header = _SEALED_HEADER.pack(SEALED_MAGIC, 1, _ALG_AES256_GCM, 0, self.chunk_size, prefix)
        yield header
        yield from seal_chunks(aead(self.key), prefix, self._bound(header, name), chunks, self.chunk_size)

    def open(self, stream: IO[bytes], name: str) -> Iterator[bytes]:
        header = read_exact(stream, _SEALED_HEADER.size)
        where = f"{self.scope}/{name}"
        if len(header) < _SEALED_HEADER.size or not header.startswith(SEALED_MAGIC):
            raise TamperedError(f"{where} is not a sealed file or its header is damaged", file=where)
        _, version, alg, _, chunk, prefix = _SEALED_HEADER.unpack(header)
        if version != 1 or alg != _ALG_AES256_GCM or not 0 < chunk <= 64 * 1024 * 1024:
            raise TamperedError(f"{where} has an unknown or damaged sealed header", file=where)

        def failure(index: int, why: str) -> TamperedError:
            return TamperedError(
                f"{where} failed authentication at chunk {index}: {why}", file=where, chunk=index
            )

        yield from open_chunks(aead(self.key), prefix, self._bound(header, name), stream, chunk, failure)

    def seal_bytes(self, data: bytes, name: str) -> bytes:
        return b"".join(self.seal([data], name))

    def open_bytes(self, blob: bytes, name: str) -> bytes:
        return b"".join(self.open(io.BytesIO(blob), name))

    def write(self, path: Path, chunks: Iterable[bytes] | bytes, name: str) -> None:
        """Seal into ``path`` atomically (temp file, fsync, rename)."""
        from onebox.fsutil import atomic_write_chunks

        if isinstance(chunks, bytes | bytearray | memoryview):
            chunks = [bytes(chunks)]
        atomic_write_chunks(Path(path), self.seal(chunks, name))

    def read(self, path: Path, name: str) -> bytes:
        with open(path, "rb") as fh:
            return b"".join(self.open(fh, name))

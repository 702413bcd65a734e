"""Envelope encryption of blobs: chunked AES-256-GCM under a fresh data key per blob.

Stored blob (format version 1)::

    header  (40 bytes)  magic "OBXENC\\0\\1" | version u8 | alg u8 | reserved u16 | chunk_size u32
                        | data-key id (16 random bytes) | nonce prefix (8 random bytes)
    chunk i             AES-256-GCM(plaintext[i*chunk_size : (i+1)*chunk_size]) || 16-byte tag

Each chunk's nonce is the blob's random prefix followed by the chunk index (u32, big-endian);
its associated data is the whole header, the blob digest, the index (u64) and a final-chunk
flag. So any changed byte, chunks swapped or dropped, a blob cut at a chunk boundary, bytes
appended, or a blob moved under another address all fail a tag, which is reported as
:class:`TamperedError` naming the blob and the chunk. Chunks are authenticated one at a time,
so a blob is decrypted as a stream; the store still hashes the plaintext against the digest.

**Where wrapped data keys live.** Not in the blob: a *key record* per encoding, a small JSON
object named ``<digest>.<data-key id>`` in a separate key space (``<artifacts>/keys``, itself a
blob backend, so local folders and fsspec/S3 both work). Rotation rewrites only these records
(a few hundred bytes each, each replaced atomically with one rename or PUT); the ciphertext of
the data is never touched, and object stores, which cannot rewrite part of an object, need no
special case. Because the record name carries the data-key id written in the blob header, two
processes storing the same content at once can never pair a blob with the other's key, and a
record is written before its blob is published, so a published blob always has its key.
"""

from __future__ import annotations

import base64
import json
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

from onebox.errors import (
    ArtifactMissingError,
    ConfigError,
    KeyUnavailableError,
    Problem,
    TamperedError,
)
from onebox.security.keys import Keyring
from onebox.security.streams import aead, open_chunks, read_exact, seal_chunks
from onebox.store.backends import BlobBackend, backend_from_url
from onebox.store.codec import CHUNK, ENVELOPE_MAGIC, BlobCodec, encrypted_without_key

if TYPE_CHECKING:
    from onebox.config import Settings

FORMAT_VERSION = 1
ALG_AES256_GCM = 1
HEADER = struct.Struct(">8sBBHI16s8s")
DEFAULT_CHUNK = 1024 * 1024
MAX_CHUNK = 64 * 1024 * 1024
RECORD_FORMAT = "onebox-wrapped-key"


@dataclass(frozen=True)
class Header:
    chunk_size: int
    dek_id: bytes
    nonce_prefix: bytes
    raw: bytes

    @classmethod
    def parse(cls, raw: bytes, digest: str) -> Header:
        magic, version, alg, _reserved, chunk_size, dek_id, prefix = HEADER.unpack(raw)
        if magic != ENVELOPE_MAGIC:
            raise ValueError("not an envelope")
        if version != FORMAT_VERSION or alg != ALG_AES256_GCM:
            raise TamperedError(
                f"blob {digest[:12]}… claims envelope format {version}/{alg}, which this onebox cannot "
                "read: its header was altered (or a newer onebox wrote it)",
                digest=digest,
                chunk=None,
            )
        if not 0 < chunk_size <= MAX_CHUNK:
            raise TamperedError(
                f"blob {digest[:12]}… has an impossible chunk size {chunk_size}", digest=digest
            )
        return cls(chunk_size, dek_id, prefix, raw)


def key_context(digest: str, dek_id: bytes) -> bytes:
    """What a wrapped key is bound to: its blob and its data-key id."""
    return f"{digest}|{dek_id.hex()}".encode()


def record_name(digest: str, dek_id: bytes) -> str:
    return f"{digest}.{dek_id.hex()}"


def keys_url(artifacts_url: str) -> str:
    """The key space next to the objects: ``<artifacts>/keys`` (a folder or an fsspec prefix)."""
    if "://" in artifacts_url:
        return artifacts_url.rstrip("/") + "/keys"
    return os.path.join(os.path.expanduser(artifacts_url), "keys")


@dataclass(frozen=True)
class KeyRecord:
    """A data key wrapped by one master key, stored as a small JSON object."""

    digest: str
    dek_id: bytes
    key_id: str
    wrapped: bytes

    def to_json(self) -> bytes:
        doc = {
            "format": RECORD_FORMAT,
            "version": 1,
            "digest": self.digest,
            "dek_id": self.dek_id.hex(),
            "key_id": self.key_id,
            "wrapped": base64.b64encode(self.wrapped).decode(),
        }
        return json.dumps(doc, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, name: str) -> KeyRecord:
        try:
            doc = json.loads(data)
            if doc.get("format") != RECORD_FORMAT:
                raise ValueError("not a key record")
            return cls(
                doc["digest"], bytes.fromhex(doc["dek_id"]), doc["key_id"], base64.b64decode(doc["wrapped"])
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise TamperedError(f"key record {name} is unreadable: {exc}", record=name) from exc


class KeyStore:
    """Key records in their own backend, so rotation never rewrites a data object."""

    def __init__(self, backend: BlobBackend) -> None:
        self.backend = backend

    @classmethod
    def for_artifacts(cls, artifacts_url: str) -> KeyStore:
        return cls(backend_from_url(keys_url(artifacts_url)))

    def put(self, record: KeyRecord) -> None:
        self.backend.write_atomic(record_name(record.digest, record.dek_id), [record.to_json()])

    def get(self, digest: str, dek_id: bytes) -> KeyRecord:
        name = record_name(digest, dek_id)
        try:
            with self.backend.open_read(name) as fh:
                data = fh.read()
        except (FileNotFoundError, ArtifactMissingError) as exc:
            # Error path only, so a full listing is affordable: another record for the same blob
            # means the header's data-key id was altered, not that the key was lost.
            if any(n.startswith(digest + ".") for n in self.names()):
                raise TamperedError(
                    f"blob {digest[:12]}… names data key {dek_id.hex()}, which it was never sealed with: "
                    "its header was altered",
                    digest=digest,
                    chunk=None,
                ) from exc
            raise KeyUnavailableError(
                f"the data key of blob {digest[:12]}… is missing from {self.backend.url} (record {name}); "
                "restore the key records from the backup taken with the artifacts",
                digest=digest,
            ) from exc
        record = KeyRecord.from_json(data, name)
        if record.digest != digest or record.dek_id != dek_id:
            raise TamperedError(f"key record {name} names another blob", record=name)
        return record

    def names(self) -> Iterator[str]:
        for obj in self.backend.list():
            if "." in obj.key:
                yield obj.key

    def get_by_name(self, name: str) -> KeyRecord:
        with self.backend.open_read(name) as fh:
            return KeyRecord.from_json(fh.read(), name)

    def replace(self, record: KeyRecord) -> None:
        """Swap a record for a re-wrapped one: one atomic rename or PUT, so a crash leaves either."""
        self.put(record)


def is_encrypted(head: bytes) -> bool:
    return head.startswith(ENVELOPE_MAGIC)


class EnvelopeCodec:
    """A :class:`~onebox.store.codec.BlobCodec` that seals new blobs (when ``encrypt``) and reads
    sealed and plaintext blobs alike (plaintext ones were stored before encryption was on)."""

    name = "envelope-aes256gcm"
    transparent = False

    def __init__(
        self,
        keyring: Keyring | None,
        keystore: KeyStore,
        *,
        encrypt: bool = True,
        chunk_size: int = DEFAULT_CHUNK,
    ) -> None:
        if encrypt and keyring is None:
            raise ValueError("encrypting needs a keyring")
        self.keyring = keyring
        self.keystore = keystore
        self.encrypt = encrypt
        self.chunk_size = chunk_size

    # -- writing --------------------------------------------------------------------------------
    def encode(self, digest: str, chunks: Iterable[bytes]) -> Iterable[bytes]:
        if not self.encrypt:
            return chunks
        return self._seal(digest, chunks)

    def _seal(self, digest: str, chunks: Iterable[bytes]) -> Iterator[bytes]:
        assert self.keyring is not None
        data_key, dek_id, prefix = os.urandom(32), os.urandom(16), os.urandom(8)
        key_id, wrapped = self.keyring.wrap(data_key, key_context(digest, dek_id))
        # The record goes first: the blob becomes visible only after this generator is drained.
        self.keystore.put(KeyRecord(digest, dek_id, key_id, wrapped))
        header = HEADER.pack(
            ENVELOPE_MAGIC, FORMAT_VERSION, ALG_AES256_GCM, 0, self.chunk_size, dek_id, prefix
        )
        yield header
        bound = header + digest.encode()
        yield from seal_chunks(aead(data_key), prefix, bound, chunks, self.chunk_size)

    # -- reading --------------------------------------------------------------------------------
    def decode(self, digest: str, stream: IO[bytes]) -> Iterator[bytes]:
        head = read_exact(stream, HEADER.size)
        if not is_encrypted(head):
            if _near_magic(head):
                raise TamperedError(f"blob {digest[:12]}… has a damaged envelope header", digest=digest)
            yield from _plain(head, stream)
            return
        if len(head) < HEADER.size:
            raise TamperedError(
                f"blob {digest[:12]}… is truncated inside its header", digest=digest, chunk=None
            )
        header = Header.parse(head, digest)
        yield from self._open(digest, header, stream)

    def data_key(self, digest: str, header: Header) -> bytes:
        if self.keyring is None:
            raise encrypted_without_key(digest)
        record = self.keystore.get(digest, header.dek_id)
        return self.keyring.unwrap(
            record.key_id, record.wrapped, key_context(digest, header.dek_id), f"blob {digest[:12]}…"
        )

    def _open(self, digest: str, header: Header, stream: IO[bytes]) -> Iterator[bytes]:
        def failure(index: int, why: str) -> TamperedError:
            why = why.replace("it was", "the blob was").replace("it is", "the blob is")
            return TamperedError(
                f"blob {digest[:12]}… failed authentication at chunk {index}: {why}",
                digest=digest,
                chunk=index,
            )

        aes = aead(self.data_key(digest, header))
        bound = header.raw + digest.encode()
        yield from open_chunks(aes, header.nonce_prefix, bound, stream, header.chunk_size, failure)


def _near_magic(head: bytes) -> bool:
    """An envelope whose magic lost a byte or two, rather than plaintext (which would have to
    start with 6 of these 8 unusual bytes)."""
    if len(head) < len(ENVELOPE_MAGIC):
        return False
    return sum(a != b for a, b in zip(head, ENVELOPE_MAGIC, strict=False)) <= 2


def _plain(head: bytes, stream: IO[bytes]) -> Iterator[bytes]:
    first = head + stream.read(CHUNK)
    if first:
        yield first
    while chunk := stream.read(CHUNK):
        yield chunk


def codec_for(settings: Settings, artifacts_url: str | None = None) -> BlobCodec:
    """The codec ``open_app`` puts under the blob store.

    No key source: plain storage, exactly as before (an encrypted blob met then is reported as
    a missing key). A key source: blobs already encrypted stay readable even with encryption
    switched off, and with ``encrypt_artifacts`` every new blob is sealed.
    """
    from onebox.security.keys import provider_from_settings
    from onebox.store.codec import PlainCodec

    provider = provider_from_settings(settings)
    if provider is None:
        if settings.encrypt_artifacts:
            raise ConfigError(
                "encrypt_artifacts is on but no master key is configured",
                problems=[
                    Problem(
                        "ONEBOX_MASTER_KEY_FILE",
                        "not set",
                        "create one with `openssl rand -hex 32 > key && chmod 600 key` and point "
                        "ONEBOX_MASTER_KEY_FILE at it (or set ONEBOX_MASTER_KEY or ONEBOX_KMS_PROVIDER)",
                    ),
                    Problem("ONEBOX_ENCRYPT_ARTIFACTS", "true", "or switch encryption off"),
                ],
            )
        return PlainCodec()
    keystore = KeyStore.for_artifacts(artifacts_url or settings.artifacts_url)
    return EnvelopeCodec(Keyring(provider), keystore, encrypt=settings.encrypt_artifacts)

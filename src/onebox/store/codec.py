"""The encryption seam of the artifact store.

A codec turns plaintext chunks into stored chunks and back. Digests always address the
plaintext, so deduplication and verification work the same with or without encryption.
:class:`PlainCodec` stores bytes as they are; the envelope codec (AES-256-GCM, see
:mod:`onebox.security.envelope`) plugs in here when encryption at rest is configured.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import IO, Protocol

from onebox.errors import KeyUnavailableError, Problem

ENVELOPE_MAGIC = b"OBXENC\x00\x01"
"""First bytes of every encrypted blob; a plaintext reader that meets them stops with a key
error instead of a confusing checksum mismatch."""


class BlobCodec(Protocol):
    """Encodes blobs on the way into a backend and decodes them on the way out."""

    name: str

    @property
    def transparent(self) -> bool:
        """True when stored bytes equal the plaintext (allows hard-linking checkouts)."""
        ...

    def encode(self, digest: str, chunks: Iterable[bytes]) -> Iterable[bytes]: ...

    def decode(self, digest: str, stream: IO[bytes]) -> Iterator[bytes]: ...


class PlainCodec:
    """No transformation: the default until encryption at rest is configured."""

    name = "plain"
    transparent = True

    def encode(self, digest: str, chunks: Iterable[bytes]) -> Iterable[bytes]:
        return chunks

    def decode(self, digest: str, stream: IO[bytes]) -> Iterator[bytes]:
        first = stream.read(CHUNK)
        if first.startswith(ENVELOPE_MAGIC):
            raise encrypted_without_key(digest)
        if first:
            yield first
        while chunk := stream.read(CHUNK):
            yield chunk


def encrypted_without_key(digest: str) -> KeyUnavailableError:
    """The error for an encrypted blob met by a process that has no master key configured."""
    return KeyUnavailableError(
        f"blob {digest[:12]}… is encrypted but no master key is configured",
        problems=[
            Problem(
                "ONEBOX_MASTER_KEY_FILE",
                "no key source is set",
                "set ONEBOX_MASTER_KEY_FILE (or ONEBOX_MASTER_KEY, or ONEBOX_KMS_PROVIDER) to the key "
                "the artifacts were encrypted with",
            )
        ],
        digest=digest,
    )


CHUNK = 4 * 1024 * 1024

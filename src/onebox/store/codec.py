"""The encryption seam of the artifact store.

A codec turns plaintext chunks into stored chunks and back. Digests always address the
plaintext, so deduplication and verification work the same with or without encryption.
The security issue plugs an envelope-encryption codec (AES-256-GCM) in here; until then
:class:`PlainCodec` stores bytes as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import IO, Protocol


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
        while chunk := stream.read(CHUNK):
            yield chunk


CHUNK = 4 * 1024 * 1024

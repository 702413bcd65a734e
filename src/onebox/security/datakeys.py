"""Named data keys: one AES-256 key per protected thing that is not a blob (a knowledge base's
sources and index, a job's checkpoints), wrapped by the master key like every blob's key.

They live in the same key space as the blobs' key records (``<artifacts>/keys``), named
``<subject>.<32 zeros>``, so master-key rotation re-wraps them with everything else and a
backup of the key records covers them. Deleting a subject's key makes everything sealed under
it unreadable at once (crypto-shredding), which is how a deleted knowledge base is forgotten
even where a copy of its folder survives.

Creation is exclusive: a thread lock and, on a local key store, an ``flock`` on
``<keys>/named-keys.lock`` are held while the key is checked for and written, so two threads or
processes that need the same subject's key at once (two uploads into an older KB) both end up
with the one key that is stored. (Object stores have no such lock: there, the first writer of a
subject must be the only one, as it is when a subject's key is made when the subject is.)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

from onebox.errors import ArtifactMissingError, InvalidInputError, KeyUnavailableError
from onebox.security.envelope import EnvelopeCodec, KeyRecord, KeyStore, key_context, record_name
from onebox.security.keys import Keyring
from onebox.security.streams import Sealer

NAMED_DEK_ID = bytes(16)
_CREATE_LOCK = threading.Lock()
_SUBJECT = re.compile(r"^[a-z]+-[A-Za-z0-9_-]{1,100}$")


class DataKeys:
    """Get, create and shred named data keys."""

    def __init__(self, keyring: Keyring, keystore: KeyStore) -> None:
        self.keyring = keyring
        self.keystore = keystore

    @classmethod
    def from_codec(cls, codec: object) -> DataKeys | None:
        """The named keys of a store with a master key configured (None otherwise)."""
        if isinstance(codec, EnvelopeCodec) and codec.keyring is not None:
            return cls(codec.keyring, codec.keystore)
        return None

    @staticmethod
    def _check(subject: str) -> None:
        if not _SUBJECT.match(subject):
            raise InvalidInputError(f"{subject!r} is not a data-key subject (kind-id, e.g. kb-1234)")

    def exists(self, subject: str) -> bool:
        self._check(subject)
        return self.keystore.backend.exists(record_name(subject, NAMED_DEK_ID))

    def get(self, subject: str) -> bytes:
        """The subject's key; KeyUnavailableError when it was never created or was shredded."""
        self._check(subject)
        try:
            record = self.keystore.get(subject, NAMED_DEK_ID)
        except (KeyUnavailableError, ArtifactMissingError) as exc:
            raise KeyUnavailableError(
                f"the data key of {subject} is missing from the key store: it was deleted with its "
                "owner, or the key records were not restored with the data",
                subject=subject,
            ) from exc
        return self.keyring.unwrap(record.key_id, record.wrapped, key_context(subject, NAMED_DEK_ID), subject)

    def get_or_create(self, subject: str) -> bytes:
        if self.exists(subject):
            return self.get(subject)
        with _CREATE_LOCK, self._store_lock():
            if self.exists(subject):  # another thread or process made it while we waited
                return self.get(subject)
            key = os.urandom(32)
            key_id, wrapped = self.keyring.wrap(key, key_context(subject, NAMED_DEK_ID))
            self.keystore.put(KeyRecord(subject, NAMED_DEK_ID, key_id, wrapped))
            return key

    @contextlib.contextmanager
    def _store_lock(self) -> Iterator[None]:
        root = getattr(self.keystore.backend, "root", None)
        if not isinstance(root, Path):  # an object store: no cross-process lock to take
            yield
            return
        with open(root / "named-keys.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def sealer(self, subject: str, *, create: bool = True) -> Sealer:
        key = self.get_or_create(subject) if create else self.get(subject)
        return Sealer(key, subject)

    def shred(self, subject: str) -> bool:
        """Delete the subject's key (everything sealed under it becomes unreadable)."""
        self._check(subject)
        name = record_name(subject, NAMED_DEK_ID)
        if not self.keystore.backend.exists(name):
            return False
        self.keystore.backend.delete(name)
        return True

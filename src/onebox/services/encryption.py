"""Encryption at rest, as operations: status, master-key rotation, encrypting older blobs.

The format and the key records are in :mod:`onebox.security.envelope`; this module walks the
store. Both long operations are crash-safe and resumable because each step is one atomic
replacement of one object (a key record, or a blob rewritten under its own address) and each
run skips what is already done: run the same command again after a crash.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from onebox.errors import ConfigError, IntegrityError, KeyUnavailableError, OneboxError, Problem
from onebox.progress import ProgressFn, null_progress
from onebox.security.datakeys import DataKeys
from onebox.security.envelope import HEADER, EnvelopeCodec, KeyRecord, is_encrypted, key_context
from onebox.security.keys import KeyProvider
from onebox.security.streams import Sealer
from onebox.services.context import App


def scratch_dir(app: App) -> Path:
    """Where an operation may write plaintext temporaries: the usual staging folder, or, with
    encryption at rest, this process's private memory-backed folder (never the home folder)."""
    if app.blobs.private:
        from onebox.security.sealed import private_dir

        return private_dir()
    return app.staging_dir


def sealer(app: App, subject: str) -> Sealer | None:
    """What new files of ``subject`` (``kb-<id>``, ``job-<id>``) are sealed with, or None when
    encryption at rest is off and they are written as plaintext."""
    codec = app.blobs.codec
    if not (isinstance(codec, EnvelopeCodec) and codec.encrypt):
        return None
    keys = DataKeys.from_codec(codec)
    assert keys is not None  # encrypting implies a keyring
    return keys.sealer(subject)


def opener(app: App, subject: str) -> Sealer:
    """What reads files sealed under ``subject`` (even with encryption since switched off)."""
    keys = DataKeys.from_codec(app.blobs.codec)
    if keys is None:
        raise KeyUnavailableError(
            f"files of {subject} are encrypted but no master key is configured",
            problems=[Problem("ONEBOX_MASTER_KEY_FILE", "not set", "configure the master key")],
        )
    return keys.sealer(subject, create=False)


def shred(app: App, subject: str) -> bool:
    """Delete ``subject``'s data key, if any (see :mod:`onebox.security.datakeys`)."""
    keys = DataKeys.from_codec(app.blobs.codec)
    return keys.shred(subject) if keys is not None else False


def _codec(app: App, need_keys: bool = True) -> EnvelopeCodec:
    codec = app.blobs.codec
    if not isinstance(codec, EnvelopeCodec) or (need_keys and codec.keyring is None):
        raise ConfigError(
            "no master key is configured",
            problems=[
                Problem(
                    "ONEBOX_MASTER_KEY_FILE",
                    "not set",
                    "point it (or ONEBOX_MASTER_KEY / ONEBOX_KMS_PROVIDER) at the current master key",
                )
            ],
        )
    return codec


def _head(app: App, digest: str) -> bytes:
    with app.blobs.backend.open_read(digest) as fh:
        return fh.read(HEADER.size)


@dataclass
class Status:
    enabled: bool
    key_id: str | None
    encrypted: int = 0
    plaintext: int = 0
    key_records: dict[str, int] = field(default_factory=dict)
    """Data keys per master-key id: more than one id means a rotation is unfinished."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def status(app: App, progress: ProgressFn = null_progress) -> Status:
    """On or off, the current key id, and how many blobs are encrypted vs plaintext."""
    codec = app.blobs.codec
    keyring = codec.keyring if isinstance(codec, EnvelopeCodec) else None
    out = Status(enabled=app.settings.encrypt_artifacts, key_id=keyring.current.key_id if keyring else None)
    objects = list(app.blobs.backend.list())
    for i, obj in enumerate(objects, 1):
        if is_encrypted(_head(app, obj.key)):
            out.encrypted += 1
        else:
            out.plaintext += 1
        progress("scan", i, len(objects))
    if isinstance(codec, EnvelopeCodec):
        counts: Counter[str] = Counter()
        for name in codec.keystore.names():
            counts[codec.keystore.get_by_name(name).key_id] += 1
        out.key_records = dict(counts)
    return out


@dataclass
class RotateReport:
    old_key_id: str
    new_key_id: str
    rewrapped: int = 0
    already: int = 0
    failed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def rotate(app: App, new: KeyProvider, progress: ProgressFn = null_progress) -> RotateReport:
    """Re-wrap every data key under ``new``; the encrypted data is not read or rewritten.

    Each key record is replaced atomically, so after a crash every blob is readable with the old
    key or the new one; running it again finishes the job (records already under ``new`` are
    skipped). Afterwards configure ``new`` as the master key: the old one no longer opens
    anything. Writers still running with the old key may add records under it; the status
    shows them and another run re-wraps them.
    """
    codec = _codec(app)
    assert codec.keyring is not None
    keyring = codec.keyring
    if new.key_id in keyring.providers and new.key_id == keyring.current.key_id:
        raise ConfigError(
            "the new master key is the current one",
            problems=[Problem("new_key", f"key id {new.key_id} is already in use", "generate a new key")],
        )
    report = RotateReport(keyring.current.key_id, new.key_id)
    names = list(codec.keystore.names())
    for i, name in enumerate(names, 1):
        try:
            record = codec.keystore.get_by_name(name)
            if record.key_id == new.key_id:
                report.already += 1
            else:
                ctx = key_context(record.digest, record.dek_id)
                data_key = keyring.unwrap(record.key_id, record.wrapped, ctx, f"blob {record.digest[:12]}…")
                codec.keystore.replace(
                    KeyRecord(record.digest, record.dek_id, new.key_id, new.wrap(data_key, ctx))
                )
                report.rewrapped += 1
        except OneboxError as exc:
            report.failed.append(f"{name}: {exc.message}")
        progress("rotate", i, len(names))
    return report


@dataclass
class EncryptReport:
    encrypted: int = 0
    already: int = 0
    failed: list[str] = field(default_factory=list)
    bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def encrypt_existing(app: App, progress: ProgressFn = null_progress) -> EncryptReport:
    """Re-encrypt blobs stored before encryption was switched on, verifying each digest.

    A blob is rewritten under its own address with one atomic publish (rename or PUT) after its
    plaintext hashed to that address, so a crash leaves it plaintext or sealed, never broken;
    running again skips sealed blobs. A damaged blob is reported and left as it was.
    """
    codec = _codec(app)
    if not codec.encrypt:
        raise ConfigError(
            "encryption at rest is off",
            problems=[Problem("ONEBOX_ENCRYPT_ARTIFACTS", "false", "set it to true first")],
        )
    report = EncryptReport()
    backend = app.blobs.backend
    objects = list(backend.list())
    total = sum(o.size for o in objects)
    done = 0
    for obj in objects:
        digest = obj.key
        try:
            if is_encrypted(_head(app, digest)):
                report.already += 1
            else:
                hasher = hashlib.sha256()

                def plaintext(d: str = digest, h: Any = hasher) -> Iterator[bytes]:
                    with backend.open_read(d) as fh:
                        while chunk := fh.read(4 * 1024 * 1024):
                            h.update(chunk)
                            yield chunk

                def matches(d: str = digest, h: Any = hasher) -> None:
                    if h.hexdigest() != d:
                        raise IntegrityError(f"blob {d[:12]}… does not hash to its address; left as it was")

                backend.write_atomic(digest, codec.encode(digest, plaintext()), before_publish=matches)
                report.encrypted += 1
                report.bytes += obj.size
        except OneboxError as exc:
            report.failed.append(f"{digest}: {exc.message}")
        done += obj.size
        progress("encrypt", done, total)
    return report


def load_new_key(key_file: Path | None, kms: str | None, app: App) -> KeyProvider:
    """The rotation target from exactly one of a key file and a KMS provider spec."""
    from onebox.security.keys import load_kms, read_key_file

    if (key_file is None) == (kms is None):
        raise ConfigError(
            "name exactly one new master key",
            problems=[Problem("--new-key-file", "missing or doubled", "give --new-key-file or --new-kms")],
        )
    if key_file is not None:
        return read_key_file(key_file, "--new-key-file")
    assert kms is not None
    return load_kms(kms, app.settings)

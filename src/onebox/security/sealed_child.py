"""Sealed pointers in a child process that opened no app: a ``torchrun`` rank.

A sealed pointer decrypts through the blob store of the process that reads it (the store installs
itself as the reader when it is opened). A job worker opens its store from the ``ONEBOX_*``
environment the executor gives it; the ranks ``torchrun`` starts for a multi-process fine-tune
inherit that environment but open nothing, so the base model's weights and the dataset shards
(both sealed pointers) would be unreadable there. :func:`ensure_reader` has a rank open the same
blob store the same way: same artifacts location, same master-key source, no database. No
decrypted byte and no key crosses the process boundary (only the settings the worker itself was
started with); each rank decrypts what it reads in its own memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from onebox.config import Settings, load_settings
from onebox.errors import ConfigError, Problem
from onebox.security.sealed import pointer_digest
from onebox.store.blobs import BlobStore


def open_blob_store(settings: Settings) -> BlobStore:
    """The blob store :func:`onebox.services.context.open_app` opens for ``settings``, alone.

    With a master key configured it becomes this process's sealed-pointer reader.
    """
    from onebox.security.envelope import codec_for
    from onebox.store.backends import backend_from_url

    return BlobStore(
        backend_from_url(settings.artifacts_url), settings.cache_dir / "checkouts", codec_for(settings)
    )


def ensure_reader(paths: Iterable[Path | None], settings: Settings | None = None) -> BlobStore | None:
    """Open the blob store (``settings``, default: from the environment) when one of ``paths``
    is a sealed pointer; returns it, or None when every path is an ordinary file.

    Raises :class:`ConfigError` when the settings name no master key: the pointers could never be
    read, and saying so here beats a failure deep inside model loading.
    """
    if not any(p is not None and pointer_digest(Path(p)) is not None for p in paths):
        return None
    store = open_blob_store(settings or load_settings())
    if not store.private:
        raise ConfigError(
            "this process reads sealed pointers but its environment names no master key",
            problems=[
                Problem(
                    "ONEBOX_MASTER_KEY_FILE",
                    "not set for this process",
                    "start it with the ONEBOX_* settings of the job worker that launched it",
                )
            ],
        )
    return store

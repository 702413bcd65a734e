"""Small secret files under the home folder (0600), created on first use."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from onebox.errors import ConfigError, Problem


def load_or_create(path: Path, nbytes: int = 32) -> bytes:
    """Read a random secret from ``path``, creating it (0600, atomically) if it does not exist.
    A file readable by others is refused: it would not be a secret."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(nbytes).hex().encode())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)  # never replace a key another process created first
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    return read_secret(path, nbytes)


def read_secret(path: Path, nbytes: int = 32) -> bytes:
    """A hex-encoded secret of ``nbytes`` from a file that only its owner can read."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(
            f"{path} is readable by other users (mode {mode:o})",
            problems=[Problem(str(path), "permissions too open", f"run `chmod 600 {path}`")],
        )
    text = path.read_text().strip()
    try:
        value = bytes.fromhex(text)
    except ValueError:
        value = b""
    if len(value) != nbytes:
        raise ConfigError(
            f"{path} does not hold a {nbytes}-byte hex key",
            problems=[Problem(str(path), "malformed key file", f"it must hold {2 * nbytes} hex digits")],
        )
    return value

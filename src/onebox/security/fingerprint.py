"""A stable fingerprint of the machine onebox runs on, for binding use policies and licences to it.

What it binds to: the OS machine id (``/etc/machine-id``, else ``/var/lib/dbus/machine-id``; the
firmware product UUID only when neither exists and it is readable) and the host name, hashed
together, so the fingerprint reveals neither. It stays the same across reboots, onebox upgrades
and users (the product UUID is root-only, so it is a fallback, never mixed in when a machine id
exists), and changes when the OS is reinstalled, the host is renamed, or the home folder is copied
to another machine — which is the point.

Limits: it is a deterrent, not hardware attestation. Root on a machine can write any machine id
and host name, and cloned VM or container images share a machine id (give each one its own with
``systemd-machine-id-setup``). Sealed packages therefore also bind to a key pair kept in the home
folder (see :mod:`onebox.services.sealed`); the fingerprint catches the copied home.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))
PRODUCT_UUID_FILE = Path("/sys/class/dmi/id/product_uuid")
DOMAIN = b"onebox-machine-fingerprint/1"
LENGTH = 32
"""Hex digits kept (128 bits): short enough to paste, far too long to collide."""

_override: str | None = None
_cached: MachineFingerprint | None = None


@dataclass(frozen=True)
class MachineFingerprint:
    value: str
    sources: tuple[str, ...]
    """Which facts went in (names only, never the values): shows how strong the binding is."""


def _read(path: Path) -> str:
    with contextlib.suppress(OSError, UnicodeDecodeError):
        return path.read_text().strip()
    return ""


def compute() -> MachineFingerprint:
    """Hash the machine's identifying facts (read fresh; ``current`` caches this)."""
    facts: list[tuple[str, str]] = []
    for path in MACHINE_ID_FILES:
        value = _read(path)
        if value:
            facts.append(("machine-id", value.lower()))
            break
    else:
        value = _read(PRODUCT_UUID_FILE)
        if value:
            facts.append(("product-uuid", value.lower()))
    facts.append(("hostname", socket.gethostname().strip().lower()))
    h = hashlib.sha256(DOMAIN)
    for name, value in facts:
        h.update(b"\n" + name.encode() + b"=" + value.encode())
    return MachineFingerprint(h.hexdigest()[:LENGTH], tuple(name for name, _ in facts))


def details() -> MachineFingerprint:
    if _override is not None:
        return MachineFingerprint(_override, ("override",))
    global _cached
    if _cached is None:
        _cached = compute()
    return _cached


def current() -> str:
    """This machine's fingerprint (or the one pinned by :func:`pinned`)."""
    return details().value


@contextlib.contextmanager
def pinned(value: str) -> Iterator[None]:
    """Pretend to be the machine ``value`` inside the block: tests simulate several hosts with it.
    Deliberately not settable from the environment, where anyone could spoof it."""
    global _override
    before, _override = _override, value
    try:
        yield
    finally:
        _override = before


def is_fingerprint(text: str) -> bool:
    return len(text) == LENGTH and all(c in "0123456789abcdef" for c in text)

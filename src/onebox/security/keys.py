"""Master keys: what wraps and unwraps the per-blob data keys of envelope encryption.

Every provider has the same small shape (:class:`KeyProvider`): a stable, non-secret ``key_id``
and ``wrap``/``unwrap`` of a 32-byte data key bound to a *context* (the blob digest and data-key
id, so a wrapped key cannot be moved onto another blob). Two kinds ship:

* :class:`LocalMasterKey`: a 256-bit key from ``master_key_file`` (a 0600 file of 64 hex digits)
  or ``master_key`` (``ONEBOX_MASTER_KEY``). Wrapping is AES-256-GCM with a random nonce.
* a KMS plug-in: ``kms_provider = "package.module:factory"`` names a callable that takes the
  :class:`~onebox.config.Settings` and returns a :class:`KeyProvider`. The key never has to
  leave the KMS: a provider for AWS KMS would call ``Encrypt(KeyId=..., Plaintext=dek,
  EncryptionContext={"onebox": context.hex()})`` in ``wrap`` and ``Decrypt`` (with the same
  context) in ``unwrap``, and use the KMS key ARN as ``key_id``. :class:`FileKms` is a small
  working example (its key-encryption key lives in a file outside the onebox home).

The key id is how a wrong key is told apart from damage: a wrapped key records the id of the
key that wrapped it, so unwrapping with another key is reported as :class:`KeyUnavailableError`
(naming both ids), while a failed unwrap under the right id means the record was altered.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from onebox.errors import ConfigError, KeyUnavailableError, Problem, TamperedError

if TYPE_CHECKING:
    from onebox.config import Settings

KEY_BYTES = 32
_WRAP_AAD = b"onebox-data-key-v1|"


@runtime_checkable
class KeyProvider(Protocol):
    """Wraps data keys under a master key it holds (or that a KMS holds for it)."""

    key_id: str

    def wrap(self, data_key: bytes, context: bytes) -> bytes:
        """Encrypt ``data_key`` so that only this master key, given ``context``, can recover it."""
        ...

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        """Recover a data key; raise (any exception) when it cannot."""
        ...


def _aead(key: bytes) -> Any:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


class LocalMasterKey:
    """A 256-bit master key held in this process (from a key file or the environment)."""

    def __init__(self, key: bytes, source: str = "key") -> None:
        if len(key) != KEY_BYTES:
            raise ConfigError(
                f"the master key from {source} is {len(key)} bytes, not {KEY_BYTES}",
                problems=[Problem(source, "wrong key length", "use 64 hex digits (256 bits)")],
            )
        self._key = key
        self._aes = _aead(key)
        self.source = source
        # A fingerprint, not the key: HMAC of a fixed label, so the id reveals nothing usable.
        self.key_id = "local:" + hmac.new(key, b"onebox master key id", hashlib.sha256).hexdigest()[:16]

    def wrap(self, data_key: bytes, context: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aes.encrypt(nonce, data_key, _WRAP_AAD + context)

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        return bytes(self._aes.decrypt(wrapped[:12], wrapped[12:], _WRAP_AAD + context))

    def __repr__(self) -> str:  # never print the key
        return f"LocalMasterKey({self.key_id}, from {self.source})"


def parse_hex_key(text: str, source: str) -> bytes:
    """A 256-bit key from 64 hex digits; ConfigError naming ``source`` otherwise."""
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise ConfigError(
            f"{source} does not hold a 256-bit key",
            problems=[Problem(source, "not 64 hex digits", "generate one with `openssl rand -hex 32`")],
        )
    return key


def read_key_file(path: Path, field: str = "ONEBOX_MASTER_KEY_FILE") -> LocalMasterKey:
    """Load a master key file, refusing one other users can read (it would not be a secret)."""
    from onebox.security.secrets import read_secret

    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"master key file {path} does not exist",
            problems=[Problem(field, f"{path} not found", "point it at a 0600 file of 64 hex digits")],
        )
    return LocalMasterKey(read_secret(path, KEY_BYTES), source=str(path))


def load_kms(spec: str, settings: Settings | None = None) -> KeyProvider:
    """Import ``module:attribute`` and call it with the settings to get a provider."""
    module_name, _, attr = spec.partition(":")
    problem = Problem("ONEBOX_KMS_PROVIDER", "", "use the form package.module:factory")
    if not module_name or not attr:
        raise ConfigError(
            f"kms_provider {spec!r} is not module:attribute",
            problems=[Problem(problem.field, "missing ':'", problem.fix)],
        )
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"cannot load kms_provider {spec!r}: {exc}",
            problems=[Problem(problem.field, str(exc), problem.fix)],
        ) from exc
    provider = factory(settings)
    if not isinstance(provider, KeyProvider) or not isinstance(getattr(provider, "key_id", None), str):
        raise ConfigError(
            f"kms_provider {spec!r} returned {type(provider).__name__}, which lacks key_id/wrap/unwrap",
            problems=[
                Problem(problem.field, "not a KeyProvider", "return an object with key_id, wrap, unwrap")
            ],
        )
    return provider


def provider_from_settings(settings: Settings) -> KeyProvider | None:
    """The configured master key, or None when no key source is set.

    Exactly one source may be set: two would leave it unclear which one new blobs use.
    """
    sources = [
        name
        for name, value in (
            ("ONEBOX_KMS_PROVIDER", settings.kms_provider),
            ("ONEBOX_MASTER_KEY_FILE", settings.master_key_file),
            ("ONEBOX_MASTER_KEY", settings.master_key),
        )
        if value
    ]
    if len(sources) > 1:
        raise ConfigError(
            "more than one master key source is configured",
            problems=[Problem(s, "set", "keep exactly one key source") for s in sources],
        )
    if settings.kms_provider:
        return load_kms(settings.kms_provider, settings)
    if settings.master_key_file:
        return read_key_file(settings.master_key_file)
    if settings.master_key:
        return LocalMasterKey(parse_hex_key(settings.master_key, "ONEBOX_MASTER_KEY"), "ONEBOX_MASTER_KEY")
    return None


class Keyring:
    """The current master key (wraps new data keys) plus older ones that may still unwrap.

    Old keys are only needed while a rotation is half done in a process that must keep reading.
    """

    def __init__(self, current: KeyProvider, *older: KeyProvider) -> None:
        self.current = current
        self.providers: dict[str, KeyProvider] = {p.key_id: p for p in (current, *older)}

    @property
    def key_ids(self) -> list[str]:
        return list(self.providers)

    def wrap(self, data_key: bytes, context: bytes) -> tuple[str, bytes]:
        return self.current.key_id, self.current.wrap(data_key, context)

    def unwrap(self, key_id: str, wrapped: bytes, context: bytes, what: str) -> bytes:
        """Recover a data key; KeyUnavailableError for an unknown key, TamperedError for damage."""
        from cryptography.exceptions import InvalidTag

        provider = self.providers.get(key_id)
        if provider is None:
            raise KeyUnavailableError(
                f"the data key of {what} was wrapped by master key {key_id}, but the configured key is "
                f"{', '.join(self.key_ids)}: wrong master key, or the store was rotated to another key",
                problems=[
                    Problem(
                        "ONEBOX_MASTER_KEY_FILE",
                        f"key {key_id} is needed",
                        "configure the master key the artifacts were encrypted (or last rotated) with",
                    )
                ],
                wanted=key_id,
                configured=self.key_ids,
            )
        try:
            key = provider.unwrap(wrapped, context)
        except InvalidTag as exc:
            raise TamperedError(
                f"the wrapped data key of {what} fails authentication under master key {key_id}: "
                "its key record was altered",
                key_id=key_id,
            ) from exc
        except Exception as exc:  # a KMS provider's own errors (network, permissions)
            raise KeyUnavailableError(
                f"master key {key_id} could not unwrap the data key of {what}: {exc}"
            ) from exc
        if len(key) != KEY_BYTES:
            raise TamperedError(f"the data key of {what} unwrapped to {len(key)} bytes, not {KEY_BYTES}")
        return key


class FileKms:
    """Example KMS provider: a key-encryption key kept in a file outside the onebox home.

    Enable it with ``ONEBOX_KMS_PROVIDER=onebox.security.keys:FileKms`` and
    ``ONEBOX_EXAMPLE_KMS_KEY_FILE=/etc/onebox-kms/kek`` (a 0600 file of 64 hex digits). It shows
    the contract a real KMS client implements: a factory taking the settings, a stable ``key_id``,
    and wrap/unwrap bound to the context. Unwrap failures surface as the provider's own errors.
    """

    def __init__(self, settings: Settings | None = None, key_file: Path | None = None) -> None:
        from onebox.security.secrets import read_secret

        path = key_file or os.environ.get("ONEBOX_EXAMPLE_KMS_KEY_FILE")
        if not path:
            raise ConfigError(
                "FileKms needs a key file",
                problems=[Problem("ONEBOX_EXAMPLE_KMS_KEY_FILE", "not set", "point it at a 0600 key file")],
            )
        self._inner = LocalMasterKey(read_secret(Path(path), KEY_BYTES), source=str(path))
        self.key_id = "filekms:" + self._inner.key_id.split(":", 1)[1]

    def wrap(self, data_key: bytes, context: bytes) -> bytes:
        return self._inner.wrap(data_key, context)

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        return self._inner.unwrap(wrapped, context)


def write_key_file(path: Path, key: bytes | None = None) -> Path:
    """Create a new master key file (0600, refusing to overwrite); for tests, setup and rotation."""
    key = key if key is not None else os.urandom(KEY_BYTES)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key.hex() + "\n")
    return path

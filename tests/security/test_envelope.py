"""The envelope format and master keys: round trips, wrong keys, tampering, rotation, KMS."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, ClassVar

import pytest

from onebox.config import Settings
from onebox.errors import ConfigError, KeyUnavailableError, TamperedError
from onebox.security.envelope import HEADER, EnvelopeCodec, KeyStore, codec_for
from onebox.security.keys import FileKms, Keyring, LocalMasterKey, load_kms, write_key_file
from onebox.security.streams import TAG_BYTES
from onebox.store.backends import FsspecBackend, LocalBackend
from onebox.store.codec import PlainCodec

CHUNK = 1024


def _codec(tmp_path: Path, key: bytes | None = None, **kw: Any) -> EnvelopeCodec:
    keyring = Keyring(LocalMasterKey(key or os.urandom(32)))
    return EnvelopeCodec(keyring, KeyStore(LocalBackend(tmp_path / "keys")), chunk_size=CHUNK, **kw)


def _seal(codec: EnvelopeCodec, data: bytes, pieces: int = 3) -> tuple[str, bytes]:
    digest = hashlib.sha256(data).hexdigest()
    step = max(1, len(data) // pieces)
    parts = [data[i : i + step] for i in range(0, len(data), step)] or [b""]
    return digest, b"".join(codec.encode(digest, parts))


def _open(codec: Any, digest: str, stored: bytes) -> bytes:
    return b"".join(codec.decode(digest, io.BytesIO(stored)))


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK, 5 * CHUNK + 17])
def test_round_trip_any_size(tmp_path: Path, size: int) -> None:
    codec = _codec(tmp_path)
    data = os.urandom(size)
    digest, stored = _seal(codec, data)
    chunks = max(1, -(-size // CHUNK))
    assert len(stored) == HEADER.size + size + chunks * TAG_BYTES
    assert size < 16 or data[:16] not in stored
    assert _open(codec, digest, stored) == data


def test_each_blob_gets_a_fresh_data_key(tmp_path: Path) -> None:
    codec = _codec(tmp_path)
    data = b"same content" * 100
    d1, s1 = _seal(codec, data)
    _, s2 = _seal(codec, data)
    assert s1 != s2 and s1[HEADER.size :] != s2[HEADER.size :]
    assert len(list(codec.keystore.names())) == 2
    assert _open(codec, d1, s1) == _open(codec, d1, s2) == data


def test_plaintext_blobs_stay_readable(tmp_path: Path) -> None:
    codec = _codec(tmp_path)
    data = b'{"a": 1}' * 1000
    assert _open(codec, hashlib.sha256(data).hexdigest(), data) == data


def test_wrong_master_key_is_a_key_error_not_corruption(tmp_path: Path) -> None:
    digest, stored = _seal(_codec(tmp_path), os.urandom(3000))
    other = _codec(tmp_path)  # same key records, another master key
    with pytest.raises(KeyUnavailableError, match="wrong master key"):
        _open(other, digest, stored)


def test_plain_codec_says_key_missing_for_encrypted_blob(tmp_path: Path) -> None:
    digest, stored = _seal(_codec(tmp_path), b"secret weights")
    with pytest.raises(KeyUnavailableError, match="no master key is configured"):
        _open(PlainCodec(), digest, stored)
    no_keys = EnvelopeCodec(None, KeyStore(LocalBackend(tmp_path / "keys")), encrypt=False)
    with pytest.raises(KeyUnavailableError):
        _open(no_keys, digest, stored)


def test_every_single_bit_flip_is_detected(tmp_path: Path) -> None:
    codec = _codec(tmp_path)
    data = os.urandom(2 * CHUNK + 100)
    digest, stored = _seal(codec, data)
    positions = list(range(HEADER.size)) + list(range(HEADER.size, len(stored), 7)) + [len(stored) - 1]
    for pos in positions:
        bad = bytearray(stored)
        bad[pos] ^= 1 << (pos % 8)
        with pytest.raises(TamperedError) as info:
            _open(codec, digest, bytes(bad))
        assert digest[:12] in str(info.value)
        if pos >= HEADER.size:
            assert "chunk" in str(info.value)


def test_truncation_extension_and_reorder_are_detected(tmp_path: Path) -> None:
    codec = _codec(tmp_path)
    digest, stored = _seal(codec, os.urandom(3 * CHUNK + 10))
    block = CHUNK + TAG_BYTES
    body = stored[HEADER.size :]
    head = stored[: HEADER.size]
    cases = {
        "cut at a chunk boundary": head + body[: 2 * block],
        "cut mid-chunk": head + body[: block + 100],
        "cut inside a tag": stored[:-3],
        "no chunks at all": head,
        "cut inside the header": stored[:20],
        "bytes appended": stored + b"\0" * 16,
        "chunk appended": stored + body[:block],
        "chunks swapped": head + body[block : 2 * block] + body[:block] + body[2 * block :],
        "chunk dropped": head + body[:block] + body[2 * block :],
    }
    for name, bad in cases.items():
        with pytest.raises(TamperedError) as info:
            _open(codec, digest, bad)
        assert digest[:12] in str(info.value), name
    with pytest.raises(TamperedError, match="truncated after this chunk"):
        _open(codec, digest, head + body[: 2 * block])


def test_blob_moved_under_another_address_is_detected(tmp_path: Path) -> None:
    codec = _codec(tmp_path)
    _, s1 = _seal(codec, b"one" * 500)
    d2, _ = _seal(codec, b"two" * 500)
    with pytest.raises(TamperedError):
        _open(codec, d2, s1)


def test_altered_key_record_is_tampering(tmp_path: Path) -> None:
    codec = _codec(tmp_path)
    digest, stored = _seal(codec, b"x" * 3000)
    (name,) = codec.keystore.names()
    path = codec.keystore.backend.local_path(name)
    assert path is not None
    doc = json.loads(path.read_bytes())
    wrapped = bytearray(base64.b64decode(doc["wrapped"]))
    wrapped[-1] ^= 1
    doc["wrapped"] = base64.b64encode(bytes(wrapped)).decode()
    os.chmod(path, 0o644)
    path.write_text(json.dumps(doc))
    with pytest.raises(TamperedError, match="key record was altered"):
        _open(codec, digest, stored)
    path.unlink()
    with pytest.raises(KeyUnavailableError, match="missing"):
        _open(codec, digest, stored)


def test_key_records_work_on_fsspec(tmp_path: Path) -> None:
    keys = KeyStore(FsspecBackend("memory://enc-test-keys"))
    codec = EnvelopeCodec(Keyring(LocalMasterKey(os.urandom(32))), keys, chunk_size=CHUNK)
    digest, stored = _seal(codec, os.urandom(5000))
    assert _open(codec, digest, stored) == b"".join(codec.decode(digest, io.BytesIO(stored)))
    assert len(list(keys.names())) == 1


def test_key_sources_from_settings(tmp_path: Path) -> None:
    key = os.urandom(32)
    kf = write_key_file(tmp_path / "master.key", key)
    home = tmp_path / "home"
    by_file = codec_for(Settings(home=home, encrypt_artifacts=True, master_key_file=kf))
    by_env = codec_for(Settings(home=home, encrypt_artifacts=True, master_key=key.hex()))
    assert isinstance(by_file, EnvelopeCodec) and isinstance(by_env, EnvelopeCodec)
    assert by_file.keyring is not None and by_env.keyring is not None
    assert by_file.keyring.current.key_id == by_env.keyring.current.key_id
    assert key.hex() not in repr(by_file.keyring.current)
    assert isinstance(codec_for(Settings(home=home)), PlainCodec)  # the default is unchanged
    reading = codec_for(Settings(home=home, master_key_file=kf))  # encryption off, key kept
    assert isinstance(reading, EnvelopeCodec) and not reading.encrypt


def test_bad_key_configuration_is_reported(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with pytest.raises(ConfigError) as info:
        codec_for(Settings(home=home, encrypt_artifacts=True))
    assert "ONEBOX_MASTER_KEY_FILE" in str(info.value)
    with pytest.raises(ConfigError, match="256-bit"):
        codec_for(Settings(home=home, encrypt_artifacts=True, master_key="abcd"))
    loose = tmp_path / "loose.key"
    loose.write_text(os.urandom(32).hex())
    os.chmod(loose, 0o644)
    with pytest.raises(ConfigError, match="readable by other users"):
        codec_for(Settings(home=home, encrypt_artifacts=True, master_key_file=loose))
    with pytest.raises(ConfigError, match="more than one"):
        codec_for(Settings(home=home, master_key=os.urandom(32).hex(), master_key_file=loose))
    with pytest.raises(ConfigError, match="cannot load"):
        codec_for(Settings(home=home, kms_provider="no_such_module_x:factory"))


class RecordingKms:
    """A test KMS: keeps its key-encryption key to itself and counts calls."""

    calls: ClassVar[list[str]] = []

    def __init__(self, settings: Settings | None) -> None:
        self._inner = LocalMasterKey(b"k" * 32)
        self.key_id = "test-kms:alias/onebox"

    def wrap(self, data_key: bytes, context: bytes) -> bytes:
        self.calls.append("wrap")
        return self._inner.wrap(data_key, context)

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        self.calls.append("unwrap")
        return self._inner.unwrap(wrapped, context)


def test_kms_provider_plug_in(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path / "home", encrypt_artifacts=True, kms_provider=f"{__name__}:RecordingKms"
    )
    codec = codec_for(settings)
    assert isinstance(codec, EnvelopeCodec) and codec.keyring is not None
    assert codec.keyring.current.key_id == "test-kms:alias/onebox"
    digest, stored = _seal(codec, b"adapter weights" * 100)
    assert _open(codec, digest, stored) == b"adapter weights" * 100
    assert RecordingKms.calls[-2:] == ["wrap", "unwrap"]
    with pytest.raises(ConfigError, match="lacks key_id"):
        load_kms(f"{__name__}:not_a_provider")


def not_a_provider(settings: Settings | None) -> object:
    return object()


def test_example_file_kms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONEBOX_EXAMPLE_KMS_KEY_FILE", str(write_key_file(tmp_path / "kek")))
    provider = load_kms("onebox.security.keys:FileKms")
    assert isinstance(provider, FileKms) and provider.key_id.startswith("filekms:")
    ctx = b"blob|id"
    assert provider.unwrap(provider.wrap(b"d" * 32, ctx), ctx) == b"d" * 32

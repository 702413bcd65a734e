"""Encryption at rest through the real store and services: nothing plaintext under the home
folder, engine parity from sealed weights, rotation and sealing of older blobs, crash safety."""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from onebox.config import Settings
from onebox.errors import KeyUnavailableError, TamperedError
from onebox.security import sealed
from onebox.security.envelope import EnvelopeCodec, KeyStore
from onebox.security.keys import Keyring, LocalMasterKey, read_key_file, write_key_file
from onebox.services import datasets, encryption, models
from onebox.services.context import App, open_app
from onebox.store.backends import FsspecBackend
from onebox.store.blobs import BlobStore


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return write_key_file(tmp_path / "keys" / "master.key")


def _settings(tmp_path: Path, **kw: Any) -> Settings:
    return Settings(home=tmp_path / "home", gc_grace_seconds=0, **kw)


@pytest.fixture
def enc_app(tmp_path: Path, key_file: Path) -> Iterator[App]:
    a = open_app(_settings(tmp_path, encrypt_artifacts=True, master_key_file=key_file))
    yield a
    a.close()


def _objects(app: App) -> dict[str, bytes]:
    out = {}
    for obj in app.blobs.backend.list():
        with app.blobs.backend.open_read(obj.key) as fh:
            out[obj.key] = fh.read()
    return out


def _plaintext_markers(root: Path) -> list[str]:
    """Files holding a safetensors header (u64 length then ``{"``) or Parquet magic anywhere."""
    found = []
    for p in root.rglob("*"):
        if not p.is_file() or p.is_symlink():
            continue
        data = p.read_bytes()
        if b"PAR1" in data:
            found.append(f"{p}: PAR1")
        for i in range(len(data) - 10):  # a header may start anywhere if a file were embedded
            if data[i + 8 : i + 10] == b'{"':
                (n,) = struct.unpack("<Q", data[i : i + 8])
                if 2 <= n <= len(data) - i - 8 and data[i + 8 + n - 1 : i + 8 + n] in (b"}", b" "):
                    found.append(f"{p}: safetensors header at {i}")
                    break
    return found


def _demo_jsonl(tmp_path: Path) -> Path:
    p = tmp_path / "sft.jsonl"
    row = (
        '{{"messages": [{{"role": "user", "content": "q{0}"}}, {{"role": "assistant", "content": "a{0}"}}]}}'
    )
    rows = [row.format(i) for i in range(40)]
    p.write_text("\n".join(rows) + "\n")
    return p


def test_scanner_finds_plaintext(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The scan below would catch plaintext weights and shards (it is not vacuous)."""
    assert _plaintext_markers(tiny_model_dir)
    app = open_app(_settings(tmp_path))
    try:
        datasets.import_file(app, _demo_jsonl(tmp_path), "plain-ds")
        models.register(app, "plain", str(tiny_model_dir))
        found = _plaintext_markers(app.settings.home)
        assert any("PAR1" in f for f in found) and any("safetensors" in f for f in found)
    finally:
        app.close()


def test_no_plaintext_at_rest_and_engine_parity(
    enc_app: App, tmp_path: Path, tiny_model_dir: Path, tiny_lora_dirs: list[Path]
) -> None:
    from onebox.engine.config import EngineConfig
    from onebox.engine.llm_engine import LLMEngine, generate_offline
    from onebox.engine.types import SamplingParams

    base = models.register(enc_app, "tiny", str(tiny_model_dir)).version
    models.register(enc_app, "tiny-lora", str(tiny_lora_dirs[0]), base_version_id=base.id)
    datasets.import_file(enc_app, _demo_jsonl(tmp_path), "chats")
    assert datasets.preview(enc_app, "chats", "train", limit=2)

    # The serving checkout: config and other small files in a private memory folder, weights as
    # sealed pointers that the engine decrypts into memory.
    model_dir = models.checkout(enc_app, "tiny", weights_in_memory=True)
    lora_dir = models.checkout(enc_app, "tiny-lora", weights_in_memory=True)
    assert enc_app.settings.home not in model_dir.parents
    assert str(model_dir).startswith(str(sealed.private_dir()))
    assert (sealed.private_dir().stat().st_mode & 0o777) == 0o700
    assert sealed.pointer_digest(model_dir / "model.safetensors") is not None
    # Transformers-based consumers get real files, but only in the private memory folder.
    full_dir = models.checkout(enc_app, "tiny")
    assert sealed.pointer_digest(full_dir / "model.safetensors") is None
    assert str(full_dir).startswith(str(sealed.private_dir()))
    # A trainer's split: a pointer in the job folder, decrypted in memory by read_examples.
    split = datasets.split_path(enc_app, "chats", "train", tmp_path / "job")
    from onebox.data.parquet import read_examples

    assert len(read_examples(split)) > 0 and split.stat().st_size < 512

    # Nothing under the home folder (artifacts, caches, staging) holds plaintext weights/shards.
    home = enc_app.settings.home
    assert (home / "artifacts").is_dir()
    assert _plaintext_markers(home) == []
    assert _plaintext_markers(tmp_path / "job") == []

    params = SamplingParams(max_tokens=12, temperature=0.0)
    prompts = [[1, 5, 9, 13], [2, 200, 7]]

    def run(mdir: Path, adapters: dict[str, Path]) -> list[list[int]]:
        cfg = EngineConfig(
            dtype="float32", max_model_len=64, max_num_seqs=4, kv_cache_bytes=2**22, adapters=adapters
        )
        eng = LLMEngine.from_model_dir(mdir, cfg)
        return generate_offline(eng, prompts, params) + generate_offline(
            eng, prompts, params, ["a"] * len(prompts) if adapters else None
        )

    assert run(model_dir, {"a": lora_dir}) == run(tiny_model_dir, {"a": tiny_lora_dirs[0]})


def test_rotation_rewraps_keys_without_touching_data(
    enc_app: App, tmp_path: Path, tiny_model_dir: Path
) -> None:
    models.register(enc_app, "tiny", str(tiny_model_dir))
    before = _objects(enc_app)
    old_codec = enc_app.blobs.codec
    assert isinstance(old_codec, EnvelopeCodec)
    new_file = write_key_file(tmp_path / "keys" / "new.key")
    new = read_key_file(new_file)
    report = encryption.rotate(enc_app, new)
    assert report.rewrapped == len(before) and not report.failed
    assert _objects(enc_app) == before  # not one byte of data rewritten

    with pytest.raises(KeyUnavailableError, match="wrong master key"):
        enc_app.blobs.read_bytes(next(iter(before)))
    rotated = open_app(_settings(tmp_path, encrypt_artifacts=True, master_key_file=new_file))
    try:
        assert rotated.blobs.read_bytes(rotated.blobs.read_manifest(_manifest(rotated)).files[0].digest)
        for digest in before:
            rotated.blobs.verify(digest)
        st = encryption.status(rotated)
        assert st.key_records == {new.key_id: len(before)} and st.plaintext == 0
        again = encryption.rotate(rotated, read_key_file(tmp_path / "keys" / "master.key"))
        assert again.rewrapped == len(before)
    finally:
        rotated.close()


def _manifest(app: App) -> str:
    with app.db.session() as s:
        return models.resolve(s, models._project_id(s, app), "tiny").manifest_digest or ""


def test_crash_mid_rotation_leaves_every_blob_readable(
    enc_app: App, tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models.register(enc_app, "tiny", str(tiny_model_dir))
    digests = list(_objects(enc_app))
    codec = enc_app.blobs.codec
    assert isinstance(codec, EnvelopeCodec) and codec.keyring is not None
    old = codec.keyring.current
    new = LocalMasterKey(os.urandom(32))
    real_replace = KeyStore.replace
    calls = {"n": 0}

    def crashing(self: KeyStore, record: Any) -> None:
        calls["n"] += 1
        if calls["n"] > len(digests) // 2:
            raise KeyboardInterrupt  # the power goes out
        real_replace(self, record)

    monkeypatch.setattr(KeyStore, "replace", crashing)
    with pytest.raises(KeyboardInterrupt):
        encryption.rotate(enc_app, new)
    monkeypatch.setattr(KeyStore, "replace", real_replace)

    def readable(*keys: Any) -> set[str]:
        store = BlobStore(
            enc_app.blobs.backend, tmp_path / "co", EnvelopeCodec(Keyring(*keys), codec.keystore)
        )
        ok = set()
        for d in digests:
            try:
                store.verify(d)
                ok.add(d)
            except KeyUnavailableError:
                pass
        return ok

    by_old, by_new = readable(old), readable(new)
    assert by_old and by_new and by_old | by_new == set(digests) and not by_old & by_new
    assert readable(new, old) == set(digests)  # a keyring holding both reads everything
    report = encryption.rotate(enc_app, new)  # resume
    assert report.already == len(by_new) and report.rewrapped == len(by_old)
    assert readable(new) == set(digests) and readable(old) == set()


def test_encrypt_existing_and_switching_off(
    tmp_path: Path, key_file: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = open_app(_settings(tmp_path))
    models.register(plain, "old", str(tiny_model_dir))
    plain.close()

    enc = open_app(_settings(tmp_path, encrypt_artifacts=True, master_key_file=key_file))
    try:
        assert models.checkout(enc, "old").is_dir()  # older plaintext blobs stay readable
        st = encryption.status(enc)
        assert st.encrypted == 0 and st.plaintext > 0
        originals = {d: enc.blobs.read_bytes(d) for d in _objects(enc)}

        # A crash half way: every blob is plaintext or sealed, each still reads back verified.
        real = enc.blobs.backend.write_atomic
        calls = {"n": 0}

        def crashing(key: str, chunks: Any, before_publish: Any = None) -> int:
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt
            return real(key, chunks, before_publish)

        monkeypatch.setattr(enc.blobs.backend, "write_atomic", crashing)
        with pytest.raises(KeyboardInterrupt):
            encryption.encrypt_existing(enc)
        monkeypatch.setattr(enc.blobs.backend, "write_atomic", real)
        assert {d: enc.blobs.read_bytes(d) for d in originals} == originals

        report = encryption.encrypt_existing(enc)
        assert report.encrypted + report.already == len(originals) and not report.failed
        assert encryption.status(enc).plaintext == 0
        assert {d: enc.blobs.read_bytes(d) for d in originals} == originals
        assert _plaintext_markers(tmp_path / "home" / "artifacts") == []
    finally:
        enc.close()

    off = open_app(_settings(tmp_path, master_key_file=key_file))  # encryption off, key kept
    try:
        assert {d: off.blobs.read_bytes(d) for d in originals} == originals
        info = off.blobs.put_bytes(b"written while encryption is off")
        with off.blobs.backend.open_read(info.digest) as fh:
            assert fh.read() == b"written while encryption is off"
    finally:
        off.close()
    nokey = open_app(_settings(tmp_path))
    try:
        with pytest.raises(KeyUnavailableError, match="no master key"):
            nokey.blobs.read_bytes(next(iter(originals)))
    finally:
        nokey.close()


def test_tampered_blob_in_store_is_reported(enc_app: App) -> None:
    info = enc_app.blobs.put_bytes(os.urandom(3 * 1024 * 1024))
    path = enc_app.blobs.backend.local_path(info.digest)
    assert path is not None
    original = path.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0x10
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))
    with pytest.raises(TamperedError, match="chunk 1"):
        enc_app.blobs.read_bytes(info.digest)
    path.write_bytes(original[: 40 + 2 * (1024 * 1024 + 16)])  # cut at a chunk boundary
    with pytest.raises(TamperedError, match="truncated"):
        enc_app.blobs.verify(info.digest)


def test_encrypted_store_on_fsspec(tmp_path: Path) -> None:
    keystore = KeyStore(FsspecBackend("memory://enc-store/keys"))
    codec = EnvelopeCodec(Keyring(LocalMasterKey(os.urandom(32))), keystore)
    store = BlobStore(FsspecBackend("memory://enc-store"), tmp_path / "co", codec)
    data = os.urandom(2_500_000)
    info = store.put_bytes(data)
    with store.backend.open_read(info.digest) as fh:
        assert data[:1000] not in fh.read()
    assert store.read_bytes(info.digest) == data
    assert hashlib.sha256(store.read_bytes(info.digest)).hexdigest() == info.digest
    assert [o.key for o in store.backend.list()] == [info.digest]  # key records live elsewhere

"""Blobs are verified on every read: corruption is reported, never used."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from onebox.errors import ArtifactCorruptedError, ArtifactMissingError, InvalidInputError
from onebox.store.backends import FsspecBackend, LocalBackend
from onebox.store.blobs import BlobStore


def _store(tmp_path: Path) -> BlobStore:
    return BlobStore(LocalBackend(tmp_path / "artifacts"), tmp_path / "checkouts")


def _corrupt(store: BlobStore, digest: str) -> None:
    path = store.backend.local_path(digest)
    assert path is not None
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_put_is_content_addressed_and_deduplicated(tmp_path: Path) -> None:
    store = _store(tmp_path)
    a = store.put_bytes("训推一体".encode())
    b = store.put_bytes("训推一体".encode())
    assert a == b and a.digest == hashlib.sha256("训推一体".encode()).hexdigest()
    assert len(list(store.backend.list())) == 1
    assert store.read_bytes(a.digest).decode() == "训推一体"
    f = tmp_path / "f.bin"
    f.write_bytes(os.urandom(9 * 1024 * 1024))  # spans several chunks
    info = store.put_file(f)
    assert info.size == f.stat().st_size and store.read_bytes(info.digest) == f.read_bytes()
    assert oct(store.backend.local_path(info.digest).stat().st_mode & 0o777) == "0o444"


def test_corrupted_blob_is_detected_on_read(tmp_path: Path) -> None:
    store = _store(tmp_path)
    info = store.put_bytes(b"model weights" * 1000)
    _corrupt(store, info.digest)
    with pytest.raises(ArtifactCorruptedError, match="corrupted"):
        store.read_bytes(info.digest)
    with pytest.raises(ArtifactCorruptedError):
        store.verify(info.digest)
    dest = tmp_path / "out" / "w.bin"
    with pytest.raises(ArtifactCorruptedError):
        store.export_file(info.digest, dest)
    assert not dest.exists() and list(dest.parent.iterdir()) == []


def test_missing_blob(tmp_path: Path) -> None:
    with pytest.raises(ArtifactMissingError):
        _store(tmp_path).read_bytes("0" * 64)


def _tree(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text('{"a": 1}')
    (root / "sub" / "weights.bin").write_bytes(os.urandom(100_000))
    return root


def test_tree_checkout_verifies_and_heals(tmp_path: Path) -> None:
    store = _store(tmp_path)
    src = _tree(tmp_path / "src")
    mblob, manifest = store.put_tree(src)
    assert [f.path for f in manifest.files] == ["config.json", "sub/weights.bin"]
    out = store.checkout(mblob.digest)
    assert (out / "sub" / "weights.bin").read_bytes() == (src / "sub" / "weights.bin").read_bytes()
    # A checkout tampered with after the fact is rebuilt from the (verified) blobs.
    victim = out / "config.json"
    victim.unlink()
    victim.write_text('{"a": 2}')
    out2 = store.checkout(mblob.digest)
    assert (out2 / "config.json").read_text() == '{"a": 1}'


def test_checkout_of_corrupted_blob_publishes_nothing(tmp_path: Path) -> None:
    store = _store(tmp_path)
    mblob, manifest = store.put_tree(_tree(tmp_path / "src"))
    _corrupt(store, manifest.entry("sub/weights.bin").digest)
    with pytest.raises(ArtifactCorruptedError):
        store.checkout(mblob.digest)
    assert not (store.checkout_root / mblob.digest).exists()
    assert [p for p in store.checkout_root.iterdir()] == []


def test_checkout_over_fsspec_copies(tmp_path: Path) -> None:
    store = BlobStore(FsspecBackend("memory://blobs-checkout"), tmp_path / "co")
    mblob, _ = store.put_tree(_tree(tmp_path / "src"))
    out = store.checkout(mblob.digest)
    assert (out / "config.json").read_text() == '{"a": 1}'


class _XorCodec:
    """A stand-in for the encryption codec: stored bytes differ from the plaintext."""

    name = "xor-test"
    transparent = False

    def encode(self, digest, chunks):
        return (bytes(b ^ 0x5A for b in c) for c in chunks)

    def decode(self, digest, stream):
        while chunk := stream.read(1 << 20):
            yield bytes(b ^ 0x5A for b in chunk)


def test_codec_seam_stores_transformed_bytes_and_verifies_plaintext(tmp_path: Path) -> None:
    store = BlobStore(LocalBackend(tmp_path / "a"), tmp_path / "co", codec=_XorCodec())
    mblob, manifest = store.put_tree(_tree(tmp_path / "src"))
    entry = manifest.entry("config.json")
    assert store.backend.local_path(entry.digest).read_bytes() != b'{"a": 1}'  # not plaintext at rest
    assert entry.digest == hashlib.sha256(b'{"a": 1}').hexdigest()  # addressed by plaintext
    out = store.checkout(mblob.digest)
    assert (out / "config.json").read_bytes() == b'{"a": 1}'
    assert not (out / "config.json").samefile(store.backend.local_path(entry.digest))  # copied, not linked


def test_put_tree_follows_symlinks_and_skips_vcs(tmp_path: Path) -> None:
    """Hugging Face cache snapshots are all symlinks into a blobs folder outside the tree."""
    store = _store(tmp_path)
    blobs = tmp_path / "hf-blobs"
    blobs.mkdir()
    (blobs / "abc").write_bytes(b"weights!")
    snap = tmp_path / "snapshot"
    (snap / ".git").mkdir(parents=True)
    (snap / ".git" / "HEAD").write_text("ref")
    (snap / "model.safetensors").symlink_to(blobs / "abc")
    (snap / "config.json").write_text("{}")
    _, manifest = store.put_tree(snap)
    assert [f.path for f in manifest.files] == ["config.json", "model.safetensors"]
    assert store.read_bytes(manifest.entry("model.safetensors").digest) == b"weights!"
    (snap / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(InvalidInputError, match="broken symbolic link"):
        store.put_tree(snap)


def test_writing_into_a_checkout_cannot_damage_the_store(tmp_path: Path) -> None:
    store = _store(tmp_path)
    mblob, manifest = store.put_tree(_tree(tmp_path / "src"))
    out = store.checkout(mblob.digest)
    with (out / "config.json").open("a") as fh:  # e.g. a trainer writing into its base model
        fh.write("garbage")
    store.verify(manifest.entry("config.json").digest)
    assert (store.checkout(mblob.digest) / "config.json").read_text() == '{"a": 1}'


def test_storing_good_content_again_repairs_a_corrupted_blob(tmp_path: Path) -> None:
    store = _store(tmp_path)
    f = tmp_path / "w.bin"
    f.write_bytes(os.urandom(50_000))
    info = store.put_file(f)
    _corrupt(store, info.digest)
    with pytest.raises(ArtifactCorruptedError):
        store.verify(info.digest)
    assert store.put_file(f) == info
    store.verify(info.digest)


def test_a_source_that_changes_while_stored_is_not_published(tmp_path: Path, monkeypatch) -> None:
    from onebox.store import blobs as blobs_mod

    store = _store(tmp_path)
    f = tmp_path / "w.bin"
    f.write_bytes(b"version one")
    real = blobs_mod.sha256_file
    monkeypatch.setattr(blobs_mod, "sha256_file", lambda p, *a, **k: real(tmp_path / "other"))
    (tmp_path / "other").write_bytes(b"what the file held when it was hashed")
    with pytest.raises(InvalidInputError, match="changed while it was being stored"):
        store.put_file(f)
    assert list(store.backend.list()) == []

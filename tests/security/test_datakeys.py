"""Sealed files under named data keys: round trips, every kind of tampering, rotation, shredding."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from onebox.config import Settings
from onebox.errors import KeyUnavailableError, TamperedError
from onebox.security.datakeys import DataKeys
from onebox.security.keys import write_key_file
from onebox.security.streams import Sealer, is_sealed_file
from onebox.services import encryption
from onebox.services.context import open_app

TEXT = "知识库里的机密段落：第三季度毛利率 41.7%。Confidential paragraph.\n".encode() * 50


def _sealer(chunk: int = 64) -> Sealer:
    return Sealer(os.urandom(32), "kb-test", chunk_size=chunk)


def test_round_trip_streams_in_chunks_and_hides_the_key(tmp_path: Path) -> None:
    s = _sealer()
    path = tmp_path / "doc.txt"
    s.write(path, [TEXT[:100], TEXT[100:]], "sources/doc.txt")
    raw = path.read_bytes()
    assert is_sealed_file(path) and "机密".encode() not in raw and b"Confidential" not in raw
    assert s.read(path, "sources/doc.txt") == TEXT
    assert s.open_bytes(s.seal_bytes(b"", "empty"), "empty") == b""
    assert s.key.hex() not in repr(s)
    assert pickle.loads(pickle.dumps(s)).read(path, "sources/doc.txt") == TEXT  # handed to a worker


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda b: b[:200] + bytes([b[200] ^ 1]) + b[201:], "modified"),
        (lambda b: b[: 24 + 2 * (64 + 16)], "truncated"),  # cut at a chunk boundary
        (lambda b: b + b[-20:], "appended|modified"),
        (lambda b: b[:10] + bytes([b[10] ^ 1]) + b[11:], "header"),
        (lambda b: b"OBXSEAL\x01" + b[8:30], "truncated|header|modified"),
    ],
)
def test_tampering_is_reported_as_such(damage: object, why: str) -> None:
    s = _sealer()
    blob = s.seal_bytes(TEXT, "sources/doc.txt")
    with pytest.raises(TamperedError, match=why):
        s.open_bytes(damage(blob), "sources/doc.txt")  # type: ignore[operator]


def test_a_file_moved_under_another_name_or_scope_fails() -> None:
    s = _sealer()
    blob = s.seal_bytes(TEXT, "sources/a.txt")
    with pytest.raises(TamperedError):
        s.open_bytes(blob, "sources/b.txt")
    with pytest.raises(TamperedError):
        Sealer(s.key, "kb-other", s.chunk_size).open_bytes(blob, "sources/a.txt")
    with pytest.raises(TamperedError):
        _sealer().open_bytes(blob, "sources/a.txt")  # another key


def _app(tmp_path: Path, key_file: Path) -> object:
    return open_app(Settings(home=tmp_path / "home", encrypt_artifacts=True, master_key_file=key_file))


def test_named_keys_are_wrapped_rotated_and_shredded(tmp_path: Path) -> None:
    key_file = write_key_file(tmp_path / "master.key")
    app = _app(tmp_path, key_file)
    s = encryption.sealer(app, "kb-42")
    assert s is not None
    path = tmp_path / "sealed.bin"
    s.write(path, TEXT, "index/x")
    keys = DataKeys.from_codec(app.blobs.codec)
    assert keys is not None and keys.exists("kb-42")
    record = next(n for n in app.blobs.codec.keystore.names() if n.startswith("kb-42."))
    assert s.key not in (app.blobs.codec.keystore.backend.local_path(record) or Path()).read_bytes()

    new_file = write_key_file(tmp_path / "new.key")
    report = encryption.rotate(app, encryption.load_new_key(new_file, None, app))
    assert report.rewrapped >= 1 and not report.failed
    rotated = _app(tmp_path, new_file)
    assert encryption.opener(rotated, "kb-42").read(path, "index/x") == TEXT
    with pytest.raises(KeyUnavailableError):
        encryption.opener(_app(tmp_path, key_file), "kb-42")  # the old master key opens nothing

    assert encryption.shred(rotated, "kb-42")
    with pytest.raises(KeyUnavailableError, match="kb-42"):
        encryption.opener(rotated, "kb-42")
    assert not encryption.shred(rotated, "kb-42")


def test_plain_homes_have_no_sealer(tmp_path: Path) -> None:
    app = open_app(Settings(home=tmp_path / "home"))
    assert encryption.sealer(app, "job-1") is None
    with pytest.raises(KeyUnavailableError):
        encryption.opener(app, "job-1")


def _create_in_child(args: tuple[str, str, str]) -> str:
    home, key_file, subject = args
    app = open_app(Settings(home=Path(home), encrypt_artifacts=True, master_key_file=Path(key_file)))
    keys = DataKeys.from_codec(app.blobs.codec)
    assert keys is not None
    return keys.get_or_create(subject).hex()


def test_concurrent_creators_all_get_the_one_stored_key(tmp_path: Path) -> None:
    """Two uploads into an older KB need its key at once: threads and processes racing to create
    it must all seal with the key that ends up stored."""
    import multiprocessing
    from concurrent.futures import ThreadPoolExecutor

    key_file = write_key_file(tmp_path / "master.key")
    app = _app(tmp_path, key_file)
    keys = DataKeys.from_codec(app.blobs.codec)
    assert keys is not None
    with ThreadPoolExecutor(8) as pool:
        got = set(pool.map(lambda _: keys.get_or_create("kb-race").hex(), range(16)))
    assert got == {keys.get("kb-race").hex()}
    args = (str(tmp_path / "home"), str(key_file), "kb-race2")
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        got = set(pool.map(_create_in_child, [args] * 6))
    assert got == {keys.get("kb-race2").hex()}


def test_a_job_keeps_the_form_its_checkpoints_began_in(tmp_path: Path) -> None:
    """Checkpoints written before encryption was turned on stay readable (the job stays plaintext
    rather than restarting from step 0); a job that began sealed stays sealed."""
    from onebox.services.training import job_sealer

    key_file = write_key_file(tmp_path / "master.key")
    enc = _app(tmp_path, key_file)
    plain_run, sealed_run, fresh_run = (tmp_path / n for n in ("plain", "sealed", "fresh"))
    (plain_run / "checkpoints/step-000001").mkdir(parents=True)
    (plain_run / "checkpoints/step-000001/state.pt").write_bytes(b"PK\x03\x04 torch zip")
    assert job_sealer(enc, "1", plain_run) is None
    fresh = job_sealer(enc, "2", fresh_run)
    assert fresh is not None and fresh.scope == "job-2"
    (sealed_run / "checkpoints/step-000001").mkdir(parents=True)
    fresh.write(sealed_run / "checkpoints/step-000001/state.pt", b"state", "checkpoints/step-000001/state.pt")
    off = open_app(Settings(home=tmp_path / "home", master_key_file=key_file))  # encryption since turned off
    still = job_sealer(off, "2", sealed_run)
    assert still is not None and still.key == fresh.key

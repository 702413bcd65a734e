from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from onebox.errors import ArtifactMissingError
from onebox.store.backends import FsspecBackend, LocalBackend, backend_from_url


def _chunks_then_crash() -> Iterator[bytes]:
    yield b"a" * 1000
    raise OSError("disk vanished")


def test_local_write_is_atomic(tmp_path: Path) -> None:
    be = LocalBackend(tmp_path)
    with pytest.raises(OSError, match="disk vanished"):
        be.write_atomic("ab" * 32, _chunks_then_crash())
    assert not be.exists("ab" * 32)
    assert list(be.tmp.iterdir()) == []  # the temp file was removed too
    assert be.write_atomic("ab" * 32, [b"hello ", b"world"]) == 11
    with be.open_read("ab" * 32) as fh:
        assert fh.read() == b"hello world"
    assert [o.key for o in be.list()] == ["ab" * 32]


def test_local_missing_object(tmp_path: Path) -> None:
    with pytest.raises(ArtifactMissingError):
        LocalBackend(tmp_path).open_read("cd" * 32)


@pytest.mark.parametrize("url", ["memory://onebox-test", "file://{tmp}/fs"])
def test_fsspec_backend_round_trip(tmp_path: Path, url: str) -> None:
    be = FsspecBackend(url.format(tmp=tmp_path))
    key = "ef" * 32
    be.write_atomic(key, [b"x" * 10, b"y"])
    assert be.exists(key)
    with be.open_read(key) as fh:
        assert fh.read() == b"x" * 10 + b"y"
    assert [(o.key, o.size) for o in be.list()] == [(key, 11)]
    be.delete(key)
    assert not be.exists(key)


def test_backend_from_url(tmp_path: Path) -> None:
    assert isinstance(backend_from_url(str(tmp_path / "a")), LocalBackend)
    assert isinstance(backend_from_url(f"file://{tmp_path}/b"), LocalBackend)
    assert isinstance(backend_from_url("memory://x"), FsspecBackend)

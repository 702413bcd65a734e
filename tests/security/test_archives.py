"""Safe extraction: zip slip, absolute paths, link escapes, devices, bombs (refused before they
are inflated), nesting, and a good archive that extracts atomically."""

from __future__ import annotations

import io
import os
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from onebox.errors import InputTooLargeError, InvalidInputError
from onebox.security.archives import ArchiveLimits, archive_kind, check_zip, extract_archive

ZEROS_MB = 200


def make_zip(path: Path, members: dict[str, bytes], *, symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16) & 0xFFFF0000
            zf.writestr(info, target)
    return path


def make_tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tf:
        for m in members:
            if isinstance(m, tuple):
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tf.addfile(info, io.BytesIO(m[1]))
            else:
                tf.addfile(m)
    return path


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def nothing_left(tmp_path: Path, dest: Path) -> None:
    assert not dest.exists()
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}.")]
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()


def test_good_zip_and_tar_extract_atomically(tmp_path: Path) -> None:
    members = {"a.txt": b"alpha", "docs/b.md": b"# beta\n", "docs/deep/c.json": b"{}"}
    z = make_zip(tmp_path / "good.zip", {**members, "docs/": b""})
    out = extract_archive(z, tmp_path / "out-zip")
    assert out.files == ["a.txt", "docs/b.md", "docs/deep/c.json"]
    assert out.bytes == sum(len(v) for v in members.values())
    assert (tmp_path / "out-zip" / "docs" / "b.md").read_bytes() == b"# beta\n"
    t = make_tar(
        tmp_path / "good.tar.gz",
        [
            ("a.txt", b"alpha"),
            ("sub/b.txt", b"beta"),
            link("sub/l", "b.txt"),
            link("sub/h", "sub/b.txt", tarfile.LNKTYPE),
        ],
        "w:gz",
    )
    assert archive_kind(t) == "tar" and archive_kind(z) == "zip"
    out = extract_archive(t, tmp_path / "out-tar")
    root = tmp_path / "out-tar"
    assert out.files == ["a.txt", "sub/b.txt", "sub/h"]
    assert os.readlink(root / "sub" / "l") == "b.txt" and (root / "sub" / "l").read_bytes() == b"beta"
    assert (root / "sub" / "h").read_bytes() == b"beta" and not (root / "sub" / "h").is_symlink()
    with pytest.raises(InvalidInputError, match="already exists"):
        extract_archive(t, root)


@pytest.mark.parametrize(
    "name", ["../evil", "docs/../../evil", "/tmp/evil", "..\\evil", "C:/evil", "C:\\evil"]
)
def test_zip_slip_and_absolute_paths_are_refused(tmp_path: Path, name: str) -> None:
    z = make_zip(tmp_path / "slip.zip", {"ok.txt": b"fine", name: b"pwned"})
    dest = tmp_path / "out"
    with pytest.raises(InvalidInputError) as ei:
        extract_archive(z, dest)
    assert ei.value.problems[0].field == "archive"
    assert "absolute" in str(ei.value) or "'..'" in str(ei.value)
    nothing_left(tmp_path, dest)  # refused up front: not even ok.txt was written


@pytest.mark.parametrize("name", ["../evil", "/tmp/evil"])
def test_tar_slip_is_refused(tmp_path: Path, name: str) -> None:
    t = make_tar(tmp_path / "slip.tar", [("ok.txt", b"fine"), (name, b"pwned")])
    with pytest.raises(InvalidInputError):
        extract_archive(t, tmp_path / "out")
    nothing_left(tmp_path, tmp_path / "out")


@pytest.mark.parametrize(
    "members",
    [
        [link("escape", "../../evil")],  # a link out of the destination
        [link("escape", "/etc/passwd")],  # an absolute link
        [link("d", "."), link("d/x", "../..")],  # a link that climbs through an earlier link
        [link("out", ".."), ("out/evil", b"pwned")],  # writing through a link the archive made
        [("f", b"x"), link("h", "../f", tarfile.LNKTYPE)],  # a hard link out
        [link("h", "etc/passwd", tarfile.LNKTYPE)],  # a hard link to no member
    ],
)
def test_tar_link_escapes_are_refused(tmp_path: Path, members: list) -> None:
    (tmp_path / "outside").mkdir()
    t = make_tar(tmp_path / "links.tar", members)
    with pytest.raises(InvalidInputError, match="unsafe archive member"):
        extract_archive(t, tmp_path / "outside" / "out")
    assert not (tmp_path / "evil").exists() and not (tmp_path / "outside" / "evil").exists()
    nothing_left(tmp_path, tmp_path / "outside" / "out")


def test_zip_symlink_escape_is_refused(tmp_path: Path) -> None:
    z = make_zip(tmp_path / "l.zip", {}, symlinks={"x": "../../etc"})
    with pytest.raises(InvalidInputError, match="outside the destination"):
        extract_archive(z, tmp_path / "out")
    z = make_zip(tmp_path / "ok.zip", {"t.txt": b"t"}, symlinks={"x": "t.txt"})
    extract_archive(z, tmp_path / "ok")
    assert os.readlink(tmp_path / "ok" / "x") == "t.txt"


def test_device_files_and_fifos_are_refused(tmp_path: Path) -> None:
    for kind in (tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE):
        dev = tarfile.TarInfo("dev")
        dev.type = kind
        t = make_tar(tmp_path / f"dev{kind!r}.tar", [dev])
        with pytest.raises(InvalidInputError, match="device file"):
            extract_archive(t, tmp_path / "out")


def _zero_bomb(path: Path, mb: int = ZEROS_MB) -> Path:
    chunk = bytes(1024 * 1024)
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf,
        zf.open("zeros.bin", "w", force_zip64=True) as fh,
    ):
        for _ in range(mb):
            fh.write(chunk)
    return path


def _no_inflating(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make opening any zip member fail, so a check that passes decided from the directory."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a zip member was opened (inflated) before the bomb was refused")

    monkeypatch.setattr(zipfile.ZipFile, "open", refuse)


def test_zip_bomb_is_refused_by_ratio_without_inflating_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bomb = _zero_bomb(tmp_path / "bomb.zip")
    assert bomb.stat().st_size < 1024 * 1024  # 200 MB of zeros in a few hundred KB
    _no_inflating(monkeypatch)
    with pytest.raises(InputTooLargeError) as ei:
        extract_archive(bomb, tmp_path / "out")
    assert "decompression bomb" in ei.value.message and ":1" in str(ei.value)
    nothing_left(tmp_path, tmp_path / "out")
    with pytest.raises(InputTooLargeError):
        check_zip(bomb)  # the same check for documents (docx/xlsx are zips) without extracting


def _office_bomb(path: Path, main: str) -> Path:
    """An Office file whose main part inflates 200 MB of zeros."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        with zf.open(main, "w", force_zip64=True) as fh:
            for _ in range(ZEROS_MB):
                fh.write(bytes(1024 * 1024))
    return path


def test_office_document_bombs_are_refused_before_parsing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onebox.data.readers import read_records
    from onebox.rag.parsers import parse_file

    docx = _office_bomb(tmp_path / "报告.docx", "word/document.xml")
    xlsx = _office_bomb(tmp_path / "rows.xlsx", "xl/workbook.xml")
    _no_inflating(monkeypatch)
    with pytest.raises(InputTooLargeError, match="compresses"):
        parse_file(docx)  # a knowledge-base document
    with pytest.raises(InputTooLargeError, match="compresses"):
        read_records(xlsx, max_bytes=1 << 30)  # a dataset import


def test_zip_bomb_is_refused_by_total_size(tmp_path: Path) -> None:
    bomb = _zero_bomb(tmp_path / "bomb.zip")
    limits = ArchiveLimits(max_ratio=10_000, max_total_bytes=100 * 1024 * 1024)
    with pytest.raises(InputTooLargeError, match=r"more than 100\.0 MiB in total"):
        extract_archive(bomb, tmp_path / "out", limits)
    nothing_left(tmp_path, tmp_path / "out")


def test_lying_zip_header_is_caught_while_copying(tmp_path: Path) -> None:
    z = make_zip(tmp_path / "lie.zip", {"big.bin": b"a" * 5000})
    raw = bytearray(z.read_bytes())
    # shrink the declared size in the central directory (offset 24 of the CD header)
    cd = raw.rfind(b"PK\x01\x02")
    raw[cd + 24 : cd + 28] = (100).to_bytes(4, "little")
    z.write_bytes(bytes(raw))
    with pytest.raises((InvalidInputError, InputTooLargeError)):
        extract_archive(z, tmp_path / "out", ArchiveLimits(max_total_bytes=1000))
    nothing_left(tmp_path, tmp_path / "out")


def test_tar_gz_bomb_refused_at_its_header(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.tar.gz"
    with tarfile.open(bomb, "w:gz") as tf:
        info = tarfile.TarInfo("zeros.bin")
        info.size = ZEROS_MB * 1024 * 1024
        tf.addfile(info, io.BytesIO(bytes(info.size)))
    started = time.perf_counter()
    with pytest.raises(InputTooLargeError, match="times its size"):
        extract_archive(bomb, tmp_path / "out")
    assert time.perf_counter() - started < 1.0
    nothing_left(tmp_path, tmp_path / "out")


def test_too_many_files(tmp_path: Path) -> None:
    z = make_zip(tmp_path / "many.zip", {f"f{i}.txt": b"x" for i in range(50)})
    with pytest.raises(InputTooLargeError, match="more than 20 members"):
        extract_archive(z, tmp_path / "out", ArchiveLimits(max_files=20))
    t = make_tar(tmp_path / "many.tar", [(f"f{i}.txt", b"x") for i in range(50)])
    with pytest.raises(InputTooLargeError, match="more than 20 members"):
        extract_archive(t, tmp_path / "out", ArchiveLimits(max_files=20))


def test_nested_archives(tmp_path: Path) -> None:
    inner = make_zip(tmp_path / "inner.zip", {"deep.txt": b"deep"})
    middle = make_zip(tmp_path / "middle.zip", {"inner.zip": inner.read_bytes(), "m.txt": b"m"})
    outer = make_zip(tmp_path / "outer.zip", {"middle.zip": middle.read_bytes()})
    # by default inner archives are left as files
    out = extract_archive(outer, tmp_path / "flat")
    assert out.files == ["middle.zip"]
    # two levels asked for: both unpacked into folders named after them
    out = extract_archive(outer, tmp_path / "deep", ArchiveLimits(max_depth=2))
    assert out.files == ["middle/inner/deep.txt", "middle/m.txt"]
    assert (tmp_path / "deep" / "middle" / "inner" / "deep.txt").read_bytes() == b"deep"
    # one level only: the archive nested deeper is refused, and nothing is left
    with pytest.raises(InputTooLargeError, match="nests archives more than 1 level"):
        extract_archive(outer, tmp_path / "one", ArchiveLimits(max_depth=1))
    nothing_left(tmp_path, tmp_path / "one")


def test_nested_bombs_share_one_budget(tmp_path: Path) -> None:
    part = make_zip(tmp_path / "part.zip", {"z.bin": bytes(3 * 1024 * 1024)})
    outer = make_zip(tmp_path / "outer.zip", {f"p{i}.zip": part.read_bytes() for i in range(10)})
    limits = ArchiveLimits(max_depth=1, max_ratio=10_000, max_total_bytes=16 * 1024 * 1024)
    with pytest.raises(InputTooLargeError, match="in total"):
        extract_archive(outer, tmp_path / "out", limits)
    nothing_left(tmp_path, tmp_path / "out")


def test_not_an_archive(tmp_path: Path) -> None:
    f = tmp_path / "x.zip"
    f.write_bytes(b"hello")
    with pytest.raises(InvalidInputError, match="not a zip or tar"):
        extract_archive(f, tmp_path / "out")

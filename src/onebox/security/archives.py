"""Safe extraction of zip and tar archives from outside.

An archive can attack the machine that opens it in two ways, and both are checked here:

- **path traversal** ("zip slip"): members named ``../x`` or ``/etc/x``, or links pointing out of
  the destination, write outside it. Every member name must be relative without ``..``; links
  must be relative and resolve inside; device files and FIFOs are refused; nothing is ever
  written through a link the archive itself created.
- **decompression bombs**: limits on the total uncompressed size, the number of members, each zip
  member's compression ratio and the nesting depth of archives in archives. Zip sizes and tar
  headers are checked *before* anything is written, and bytes are counted again while writing,
  so a header that lies cannot get past the budget either.

Extraction goes to a temporary folder beside the destination, which is renamed into place only
when everything succeeded: a refused archive leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

from onebox.errors import InputTooLargeError, InvalidInputError, Problem

CHUNK = 1024 * 1024
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


@dataclass(frozen=True)
class ArchiveLimits:
    """Budgets for one extraction, shared by nested archives."""

    max_total_bytes: int = 8 * 1024**3
    """Uncompressed bytes of all members together."""
    max_files: int = 20_000
    """Members (files, folders, links) of all levels together."""
    max_ratio: float = 200.0
    """Uncompressed / compressed size of one zip member (of the whole stream for compressed tars)."""
    ratio_floor_bytes: int = 1024 * 1024
    """Members smaller than this are not held to ``max_ratio`` (small text compresses well)."""
    max_depth: int = 0
    """How many levels of archives inside the archive are extracted too (0: left as files)."""


@dataclass
class _Budget:
    limits: ArchiveLimits
    bytes: int = 0
    files: int = 0
    source: str = ""

    def add_file(self, name: str) -> None:
        self.files += 1
        if self.files > self.limits.max_files:
            raise _too_large(self.source, name, f"holds more than {self.limits.max_files} members")

    def add_bytes(self, name: str, n: int) -> None:
        self.bytes += n
        if self.bytes > self.limits.max_total_bytes:
            raise _too_large(
                self.source, name, f"unpacks to more than {_size(self.limits.max_total_bytes)} in total"
            )


@dataclass
class Extracted:
    """What an extraction wrote: the destination and the relative paths of its files."""

    root: Path
    files: list[str] = field(default_factory=list)
    bytes: int = 0


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def _too_large(source: str, member: str, why: str) -> InputTooLargeError:
    return InputTooLargeError(
        f"{source}: refused as a decompression bomb: {why}",
        problems=[Problem("archive", f"{member or source}: {why}", "split the archive or raise the limit")],
    )


def _unsafe(source: str, member: str, why: str) -> InvalidInputError:
    return InvalidInputError(
        f"{source}: unsafe archive member {member!r}: {why}",
        problems=[Problem("archive", f"{member!r} {why}", "repack the archive with plain relative paths")],
    )


def safe_member_path(name: str, source: str = "archive") -> PurePosixPath:
    """The member's relative path, or an error for absolute paths, drive letters and ``..``."""
    clean = name.replace("\\", "/")
    p = PurePosixPath(clean)
    if not clean or "\x00" in clean:
        raise _unsafe(source, name, "has an empty or invalid name")
    if p.is_absolute() or (len(clean) > 1 and clean[1] == ":"):
        raise _unsafe(source, name, "is an absolute path")
    if ".." in p.parts:
        raise _unsafe(source, name, "climbs out of the destination with '..'")
    parts = [x for x in p.parts if x not in ("", ".")]
    if not parts:
        raise _unsafe(source, name, "names no file")
    return PurePosixPath(*parts)


def _within(root: Path, path: str) -> bool:
    root_s = os.path.realpath(root)
    return os.path.commonpath([root_s, os.path.realpath(path)]) == root_s


def _mkdirs(root: Path, parts: tuple[str, ...], source: str, name: str) -> Path:
    """Create ``root/parts`` folder by folder, refusing to pass through a link or a file (checked
    before each folder is made, so a link planted by the archive is never followed)."""
    cur = root
    for part in parts:
        cur = cur / part
        if cur.is_symlink():
            raise _unsafe(source, name, "would be written through a link")
        if cur.exists() and not cur.is_dir():
            raise _unsafe(source, name, "would be written inside a file")
        cur.mkdir(exist_ok=True)
    return cur


def _target(root: Path, rel: PurePosixPath, source: str, name: str) -> Path:
    """Where a file or link member goes: its folders made safely, the name not yet taken."""
    dest = _mkdirs(root, rel.parts[:-1], source, name) / rel.parts[-1]
    if dest.is_symlink() or dest.exists():
        raise _unsafe(source, name, "appears twice in the archive")
    return dest


def _make_link(root: Path, rel: PurePosixPath, target: str, source: str, name: str) -> None:
    """A symbolic link is kept only when relative and resolving inside the destination."""
    absolute = os.path.isabs(target) or target.startswith("\\") or (len(target) > 1 and target[1] == ":")
    dest = _target(root, rel, source, name)
    if not target or absolute or not _within(root, os.path.join(os.path.realpath(dest.parent), target)):
        raise _unsafe(source, name, f"is a link to {target!r}, outside the destination")
    os.symlink(target, dest)


def _copy(src: IO[bytes], dest: Path, budget: _Budget, name: str, declared: int) -> None:
    """Copy with the budget checked as bytes arrive (a lying header stops at the limit)."""
    n = 0
    with open(dest, "xb") as out:
        while chunk := src.read(CHUNK):
            n += len(chunk)
            if n > declared:
                raise _too_large(budget.source, name, "holds more bytes than its header says")
            budget.add_bytes(name, len(chunk))
            out.write(chunk)


# -- zip --------------------------------------------------------------------------------------------


def _zip_mode(info: zipfile.ZipInfo) -> int:
    return (info.external_attr >> 16) & 0xFFFF


def _scan_zip(zf: zipfile.ZipFile, budget: _Budget) -> None:
    """Every check that needs no extraction: names, kinds, count, declared sizes and ratios."""
    lim = budget.limits
    declared = 0
    infos = zf.infolist()
    if len(infos) + budget.files > lim.max_files:
        raise _too_large(budget.source, "", f"holds more than {lim.max_files} members")
    for info in infos:
        safe_member_path(info.filename, budget.source)
        mode = _zip_mode(info)
        kind = stat.S_IFMT(mode)
        if kind and kind not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK):
            raise _unsafe(budget.source, info.filename, "is a device file or FIFO")
        if info.flag_bits & 0x1:
            raise InvalidInputError(f"{budget.source}: {info.filename!r} is encrypted; decrypt the archive")
        declared += info.file_size
        if budget.bytes + declared > lim.max_total_bytes:
            raise _too_large(
                budget.source, info.filename, f"unpacks to more than {_size(lim.max_total_bytes)} in total"
            )
        if info.file_size >= lim.ratio_floor_bytes:
            ratio = info.file_size / max(1, info.compress_size)
            if ratio > lim.max_ratio:
                raise _too_large(
                    budget.source,
                    info.filename,
                    f"compresses {ratio:.0f}:1 ({_size(info.file_size)} from {_size(info.compress_size)}), "
                    f"more than the {lim.max_ratio:.0f}:1 limit",
                )


def _extract_zip(path: Path, root: Path, budget: _Budget, written: list[Path]) -> None:
    try:
        with zipfile.ZipFile(path) as zf:
            _scan_zip(zf, budget)
            for info in zf.infolist():
                rel = safe_member_path(info.filename, budget.source)
                budget.add_file(info.filename)
                kind = stat.S_IFMT(_zip_mode(info))
                if info.is_dir() or kind == stat.S_IFDIR:
                    _mkdirs(root, rel.parts, budget.source, info.filename)
                elif kind == stat.S_IFLNK:
                    if info.file_size > 4096:
                        raise _unsafe(budget.source, info.filename, "is a link with an overlong target")
                    target = zf.read(info).decode("utf-8", "replace")
                    _make_link(root, rel, target, budget.source, info.filename)
                else:
                    dest = _target(root, rel, budget.source, info.filename)
                    with zf.open(info) as src:
                        _copy(src, dest, budget, info.filename, info.file_size)
                    written.append(dest)
    except zipfile.BadZipFile as exc:
        raise InvalidInputError(f"{budget.source}: not a readable zip archive ({exc})") from exc


# -- tar --------------------------------------------------------------------------------------------


def _tar_members(tf: tarfile.TarFile, budget: _Budget, archive_bytes: int) -> Iterator[tarfile.TarInfo]:
    """Members one by one, each checked before the stream moves past it (no bomb is inflated
    just to be counted)."""
    lim = budget.limits
    declared = 0
    while (m := tf.next()) is not None:
        safe_member_path(m.name, budget.source)
        if m.ischr() or m.isblk() or m.isfifo() or not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
            raise _unsafe(budget.source, m.name, "is a device file, FIFO or unknown kind")
        declared += m.size if m.isfile() else 0
        if budget.bytes + declared > lim.max_total_bytes:
            raise _too_large(
                budget.source, m.name, f"unpacks to more than {_size(lim.max_total_bytes)} in total"
            )
        if declared >= lim.ratio_floor_bytes and declared / max(1, archive_bytes) > lim.max_ratio:
            raise _too_large(
                budget.source,
                m.name,
                f"unpacks to {declared / max(1, archive_bytes):.0f} times its size, more than "
                f"the {lim.max_ratio:.0f}:1 limit",
            )
        yield m


def _extract_tar(path: Path, root: Path, budget: _Budget, written: list[Path]) -> None:
    files: dict[PurePosixPath, Path] = {}
    try:
        with tarfile.open(path, mode="r:*") as tf:
            for m in _tar_members(tf, budget, path.stat().st_size):
                rel = safe_member_path(m.name, budget.source)
                budget.add_file(m.name)
                if m.isdir():
                    _mkdirs(root, rel.parts, budget.source, m.name)
                elif m.issym():
                    _make_link(root, rel, m.linkname, budget.source, m.name)
                elif m.islnk():  # a hard link: a copy of a file this archive extracted before
                    src = files.get(safe_member_path(m.linkname, budget.source))
                    if src is None:
                        raise _unsafe(
                            budget.source, m.name, f"is a hard link to {m.linkname!r}, no file in it"
                        )
                    dest = _target(root, rel, budget.source, m.name)
                    with open(src, "rb") as fh:
                        _copy(fh, dest, budget, m.name, src.stat().st_size)
                    files[rel] = dest
                    written.append(dest)
                else:
                    dest = _target(root, rel, budget.source, m.name)
                    fh = tf.extractfile(m)
                    if fh is None:
                        raise _unsafe(budget.source, m.name, "cannot be read")
                    with fh:
                        _copy(fh, dest, budget, m.name, m.size)
                    os.chmod(dest, 0o755 if m.mode & 0o100 else 0o644)  # no setuid, no odd modes
                    files[rel] = dest
                    written.append(dest)
    except tarfile.TarError as exc:
        raise InvalidInputError(f"{budget.source}: not a readable tar archive ({exc})") from exc


# -- entry points ---------------------------------------------------------------------------------


def archive_kind(path: Path) -> str | None:
    """``zip`` or ``tar`` by content (not by name), None for anything else."""
    path = Path(path)
    if not path.is_file():
        return None
    if zipfile.is_zipfile(path):
        return "zip"
    try:
        return "tar" if tarfile.is_tarfile(path) else None
    except (OSError, tarfile.TarError):
        return None


def _is_nested_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def _strip_suffix(name: str) -> str:
    low = name.lower()
    for suffix in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True):
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _extract_into(path: Path, root: Path, budget: _Budget, written: list[Path], depth: int) -> None:
    kind = archive_kind(path)
    if kind is None:
        raise InvalidInputError(f"{budget.source}: {path.name} is not a zip or tar archive")
    start = len(written)
    (_extract_zip if kind == "zip" else _extract_tar)(path, root, budget, written)
    max_depth = budget.limits.max_depth
    for inner in [p for p in written[start:] if _is_nested_archive(p.name) and archive_kind(p)]:
        if max_depth == 0:
            continue  # nesting not asked for: inner archives stay files
        if depth >= max_depth:
            raise _too_large(budget.source, inner.name, f"nests archives more than {max_depth} level(s) deep")
        inner_root = inner.with_name(_strip_suffix(inner.name))
        if inner_root.exists() or inner_root.is_symlink():
            raise _unsafe(
                budget.source, inner.name, f"unpacks over {inner_root.name!r}, already in the archive"
            )
        written.remove(inner)
        budget.bytes -= inner.stat().st_size  # its members are counted instead
        packed = inner.with_name(f".{inner.name}.nested")
        os.replace(inner, packed)
        try:
            inner_root.mkdir()
            _extract_into(packed, inner_root, budget, written, depth + 1)
        finally:
            packed.unlink(missing_ok=True)


def extract_archive(path: Path, dest: Path, limits: ArchiveLimits | None = None) -> Extracted:
    """Extract a zip or tar (plain, gz, bz2, xz) archive into ``dest``, which must not exist.

    All or nothing: members go to a temporary folder beside ``dest`` that is renamed to ``dest``
    once every member passed every check. Raises ``InvalidInputError`` for unsafe members and
    ``InputTooLargeError`` for archives over a limit."""
    path, dest = Path(path), Path(dest)
    limits = limits or ArchiveLimits()
    if dest.exists() or dest.is_symlink():
        raise InvalidInputError(
            f"{dest} already exists", problems=[Problem("dest", "must not exist yet", "choose a new folder")]
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".extracting"))
    budget = _Budget(limits, source=path.name)
    written: list[Path] = []
    try:
        _extract_into(path, tmp, budget, written, 0)
        files = sorted(p.relative_to(tmp).as_posix() for p in written)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Extracted(dest, files, sum((dest / f).stat().st_size for f in files))


DOCUMENT_LIMITS = ArchiveLimits(max_total_bytes=512 * 1024**2, max_files=10_000)
"""For zip-based documents (.docx/.xlsx/.pptx) that parsers inflate in memory."""


def scan_zip(zf: zipfile.ZipFile, limits: ArchiveLimits | None = None, source: str = "archive") -> None:
    """Check an open zip without extracting it: member names, kinds, count, declared total size and
    compression ratios. Python's zipfile never inflates a member past its declared size, so for
    parsers that read members in memory a document passing this cannot be a zip bomb."""
    _scan_zip(zf, _Budget(limits or ArchiveLimits(), source=source))


def check_zip(path: Path, limits: ArchiveLimits | None = None) -> None:
    """:func:`scan_zip` of a file; an unreadable zip is invalid input."""
    try:
        with zipfile.ZipFile(path) as zf:
            scan_zip(zf, limits, Path(path).name)
    except zipfile.BadZipFile as exc:
        raise InvalidInputError(f"{Path(path).name}: not a readable zip archive ({exc})") from exc

"""Files → parsed, chunked, embedded documents in a knowledge-base index, incrementally.

The index is the only state: a document is skipped when the index already holds its source with
the same sha256 and tags, so a re-run after a crash or a cancel redoes only what was not committed
(the index writes each document as one unit). Two modes, chosen by what is passed:

* a folder: the index is synced to it. Sources are paths relative to the folder; indexed documents
  whose file is gone are deleted.
* a list of files: they are added or replaced, nothing else is touched. Sources are paths relative
  to ``base`` when given, else file names.

A file that cannot be read (encrypted, corrupt, empty, too large, unsupported, missing parser
dependency, or a sealed file that fails authentication) is reported with its reason and the rest
goes on; a document that was indexed before and is now unreadable keeps its previous version.

Files sealed at rest are read through ``read`` (see :data:`ReadFn`): their plaintext is hashed and
parsed in memory, and ``content_hash``/``size_bytes`` describe the plaintext, so a document is
"unchanged" whatever its ciphertext looks like.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from onebox.errors import (
    ConfigError,
    DependencyMissingError,
    EmptyInputError,
    ErrorList,
    InputTooLargeError,
    InvalidInputError,
    NotFoundError,
    OneboxError,
    Problem,
    TamperedError,
)
from onebox.progress import ProgressFn, null_progress
from onebox.rag.chunking import DEFAULT_MAX_TOKENS, DEFAULT_OVERLAP_TOKENS, chunk_elements
from onebox.rag.parsers import DEFAULT_MAX_BYTES, SUPPORTED_EXTENSIONS, parse_file
from onebox.rag.types import ChunkIndex, DocumentRecord

Outcome = Literal["added", "updated", "unchanged", "deleted", "failed"]
CancelFn = Callable[[], bool]
ReadFn = Callable[[str, Path], bytes | None]
"""``read(source, path)``: the file's content when it must be decrypted (raising
:class:`TamperedError` when it fails authentication), or None to read the file as it is."""

IGNORED_PREFIXES = (".", "~$")
"""Hidden files and folders, and Office lock files (``~$report.docx``), are never documents."""


class EmbedderLike(Protocol):
    """What ingestion needs of :class:`onebox.rag.embedding.Embedder` (a protocol so tests may fake it)."""

    @property
    def dim(self) -> int: ...

    @property
    def max_tokens(self) -> int: ...

    def count_tokens(self, text: str) -> int: ...

    def embed(
        self,
        texts: Sequence[str],
        batch_size: int | None = None,
        *,
        progress: Callable[[int, int], None] | None,
    ) -> np.ndarray: ...


@dataclass(frozen=True)
class ParseOptions:
    """How files are read and cut; validated once, before any file is touched."""

    max_bytes: int = DEFAULT_MAX_BYTES
    """Largest file accepted (bytes)."""
    ocr: bool = True
    """OCR images and scanned PDF pages (slow); off skips them with a warning."""
    max_tokens: int = DEFAULT_MAX_TOKENS
    """Chunk budget in embedding-model tokens (capped at what the model takes)."""
    overlap_tokens: int = DEFAULT_OVERLAP_TOKENS
    batch_size: int = 32
    """Chunks per embedding batch."""

    def __post_init__(self) -> None:
        errs = ErrorList()
        if self.max_bytes < 1:
            errs.add("max_bytes", f"is {self.max_bytes}; must be at least 1")
        if self.max_tokens < 16:
            errs.add("max_tokens", f"is {self.max_tokens}; must be at least 16")
        if self.overlap_tokens < 0 or self.overlap_tokens > self.max_tokens // 2:
            errs.add("overlap_tokens", f"is {self.overlap_tokens}; must be in [0, max_tokens / 2]")
        if self.batch_size < 1:
            errs.add("batch_size", f"is {self.batch_size}; must be at least 1")
        errs.raise_if_any("invalid ingestion options", ConfigError)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> ParseOptions:
        """From JSON (a job spec): unknown keys are reported with the known ones."""
        values = dict(values or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                "invalid ingestion options",
                problems=[
                    Problem(k, "unknown option", f"use one of {', '.join(sorted(known))}") for k in unknown
                ],
            )
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FileResult:
    """What happened to one file (or one deleted document)."""

    source: str
    outcome: Outcome
    doc_id: str | None = None
    format: str | None = None
    chunks: int = 0
    pages: int = 0
    size_bytes: int = 0
    seconds: float = 0.0
    error_code: str | None = None
    """``errors.OneboxError.code`` of the failure (``document_encrypted``, ``empty_input``...)."""
    reason: str | None = None
    warnings: tuple[str, ...] = ()


@dataclass
class IngestReport:
    """Per-outcome file lists; ``cancelled`` when it stopped early (a re-run continues)."""

    added: list[FileResult] = field(default_factory=list)
    updated: list[FileResult] = field(default_factory=list)
    unchanged: list[FileResult] = field(default_factory=list)
    deleted: list[FileResult] = field(default_factory=list)
    failed: list[FileResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """Files in a folder that are not documents (unsupported extension); listed, not errors."""
    cancelled: bool = False
    seconds: float = 0.0

    def add(self, result: FileResult) -> None:
        getattr(self, result.outcome).append(result)

    @property
    def chunks(self) -> int:
        """Chunks written by this run (added and updated documents)."""
        return sum(r.chunks for r in (*self.added, *self.updated))

    @property
    def pages(self) -> int:
        return sum(r.pages for r in (*self.added, *self.updated))

    def counts(self) -> dict[str, int]:
        return {k: len(getattr(self, k)) for k in ("added", "updated", "unchanged", "deleted", "failed")}

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            k: [{**asdict(r), "seconds": round(r.seconds, 3)} for r in getattr(self, k)]
            for k in self.counts()
        }
        out.update(
            skipped=list(self.skipped),
            cancelled=self.cancelled,
            seconds=round(self.seconds, 3),
            chunks=self.chunks,
            pages=self.pages,
            counts=self.counts(),
        )
        return out


def doc_id_for(source: str) -> str:
    """Stable id of a source: re-ingesting a changed file replaces the same document."""
    return "doc_" + hashlib.sha256(source.encode("utf-8")).hexdigest()[:20]


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _ignored(rel: Path) -> bool:
    return any(part.startswith(IGNORED_PREFIXES) for part in rel.parts)


def walk_folder(folder: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    """(source, path) of every document under ``folder`` in a stable order, and the skipped files."""
    found: list[tuple[str, Path]] = []
    skipped: list[str] = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if _ignored(rel) or not path.is_file():
            continue
        if path.suffix.lower() in SUPPORTED_EXTENSIONS:
            found.append((rel.as_posix(), path))
        else:
            skipped.append(rel.as_posix())
    return found, skipped


def _list_sources(paths: Sequence[Path], base: Path | None) -> list[tuple[str, Path]]:
    """Sources of an explicit file list; the same source twice is refused (one would hide the other)."""
    out: list[tuple[str, Path]] = []
    seen: dict[str, Path] = {}
    errs = ErrorList()
    for p in paths:
        path = Path(p)
        if base is not None:
            try:
                source = path.resolve().relative_to(Path(base).resolve()).as_posix()
            except ValueError:
                errs.add("paths", f"{path} is not inside {base}", "pass files under the base folder")
                continue
        else:
            source = path.name
        if source in seen and seen[source] != path:
            errs.add("paths", f"{path} and {seen[source]} would both be document {source!r}", "rename one")
            continue
        seen[source] = path
        out.append((source, path))
    errs.raise_if_any("invalid files to ingest", InvalidInputError)
    return out


def ingest_folder(
    index: ChunkIndex,
    embedder: EmbedderLike,
    paths_or_folder: Path | str | Sequence[Path | str],
    *,
    tags: Sequence[str] | None = None,
    progress: ProgressFn = null_progress,
    cancel: CancelFn | None = None,
    parse_options: ParseOptions | None = None,
    base: Path | None = None,
    on_file: Callable[[FileResult], None] | None = None,
    read: ReadFn | None = None,
) -> IngestReport:
    """Bring ``index`` up to date with a folder (sync) or a list of files (add/replace).

    ``tags`` set the documents' tags (None keeps those a document already has; a change re-indexes
    it). ``progress`` gets ``("files", done, total)`` per file and ``("embed <source>", done, total)``
    per embedding batch; ``cancel`` is asked between files; ``on_file`` sees each result as it is
    decided (for logs); ``read`` opens sealed files (see :data:`ReadFn`).
    """
    opts = parse_options or ParseOptions()
    started = time.perf_counter()
    report = IngestReport()
    if index.dim != embedder.dim:
        raise ConfigError(
            "the embedding model does not fit the index",
            problems=[
                Problem(
                    "embedding", f"makes {embedder.dim}-dim vectors; the index holds {index.dim}-dim ones"
                )
            ],
        )
    folder_mode = isinstance(paths_or_folder, (str, Path))
    if folder_mode:
        folder = Path(paths_or_folder)  # type: ignore[arg-type]
        if not folder.is_dir():
            raise NotFoundError(f"{folder} is not a folder", problems=[Problem("folder", "no such folder")])
        files, report.skipped = walk_folder(folder)
    else:
        files = _list_sources([Path(p) for p in paths_or_folder], base)  # type: ignore[union-attr]
    wanted_tags = None if tags is None else tuple(dict.fromkeys(t.strip() for t in tags if t.strip()))
    known = {d.source: d for d in index.documents()}
    budget = min(opts.max_tokens, embedder.max_tokens)
    overlap = min(opts.overlap_tokens, budget // 2)

    def emit(result: FileResult) -> None:
        report.add(result)
        if on_file is not None:
            on_file(result)

    total = len(files)
    progress("files", 0, total)
    for done, (source, path) in enumerate(files, 1):
        if cancel is not None and cancel():
            report.cancelled = True
            break
        previous = known.get(source)
        emit(
            _ingest_one(
                index, embedder, source, path, previous, wanted_tags, opts, budget, overlap, progress, read
            )
        )
        progress("files", done, total)
    if folder_mode and not report.cancelled:
        present = {s for s, _ in files}
        for source, doc in sorted(known.items()):
            if source not in present and index.delete_document(doc.doc_id):
                emit(FileResult(source, "deleted", doc_id=doc.doc_id, format=doc.format, chunks=doc.n_chunks))
    report.seconds = time.perf_counter() - started
    return report


def _ingest_one(
    index: ChunkIndex,
    embedder: EmbedderLike,
    source: str,
    path: Path,
    previous: DocumentRecord | None,
    tags: tuple[str, ...] | None,
    opts: ParseOptions,
    budget: int,
    overlap: int,
    progress: ProgressFn,
    read: ReadFn | None = None,
) -> FileResult:
    t0 = time.perf_counter()
    doc_id = previous.doc_id if previous is not None else doc_id_for(source)
    try:
        stat = path.stat()
        if read is not None and stat.st_size > opts.max_bytes + (opts.max_bytes >> 16) + 4096:
            # more than the limit plus sealing overhead (16 bytes a MiB): refuse before decrypting
            return FileResult(
                source, "failed", doc_id=doc_id, size_bytes=stat.st_size, error_code=InputTooLargeError.code,
                reason=f"{source}: {stat.st_size:,} bytes is over the {opts.max_bytes:,}-byte limit for one "
                "document; split it into smaller files or raise the limit.",
            )  # fmt: skip
        data = read(source, path) if read is not None else None
        digest = sha256_of(path) if data is None else hashlib.sha256(data).hexdigest()
        size = stat.st_size if data is None else len(data)
    except OSError as exc:
        return FileResult(
            source,
            "failed",
            doc_id=doc_id,
            error_code="document_error",
            reason=f"{source}: cannot be read ({exc})",
        )
    except TamperedError as exc:  # this file was altered at rest: report it, index the others
        return FileResult(source, "failed", doc_id=doc_id, error_code=exc.code, reason=exc.message)
    doc_tags = tags if tags is not None else (previous.tags if previous is not None else ())
    if previous is not None and previous.content_hash == digest and tuple(previous.tags) == doc_tags:
        return FileResult(
            source,
            "unchanged",
            doc_id=doc_id,
            format=previous.format,
            chunks=previous.n_chunks,
            size_bytes=size,
        )
    try:
        parsed = parse_file(path, source=source, max_bytes=opts.max_bytes, ocr=opts.ocr, data=data)
        chunks = chunk_elements(
            doc_id,
            parsed.elements,
            count_tokens=embedder.count_tokens,
            max_tokens=budget,
            overlap_tokens=overlap,
            title=parsed.title,
        )
        if not chunks:
            raise EmptyInputError(f"{source}: no text left to index after removing headers and footers.")
        stage = f"embed {source}"
        progress(stage, 0, len(chunks))
        vectors = embedder.embed(
            [c.embed_text(parsed.title) for c in chunks],
            opts.batch_size,
            progress=lambda d, t: progress(stage, d, t),
        )
        record = DocumentRecord(
            doc_id=doc_id,
            source=source,
            content_hash=digest,
            format=parsed.format,
            title=parsed.title,
            size_bytes=size,
            n_chunks=len(chunks),
            tags=doc_tags,
            modified=datetime.fromtimestamp(stat.st_mtime, UTC),
        )
        index.upsert_document(record, chunks, vectors)
    except (InvalidInputError, DependencyMissingError) as exc:
        return FileResult(
            source,
            "failed",
            doc_id=doc_id,
            size_bytes=size,
            seconds=time.perf_counter() - t0,
            error_code=exc.code,
            reason=exc.message,
        )
    except OneboxError:
        raise  # the index or the model failed: not this file's fault, stop the run
    return FileResult(
        source,
        "updated" if previous is not None else "added",
        doc_id=doc_id,
        format=parsed.format,
        chunks=len(chunks),
        pages=parsed.pages,
        size_bytes=size,
        seconds=time.perf_counter() - t0,
        warnings=tuple(parsed.warnings),
    )

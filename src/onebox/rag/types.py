"""Plain data shared by the knowledge-base pipeline: parse → chunk → embed → index → retrieve.

Parsers yield :class:`Element` s, the chunker turns them into :class:`Chunk` s, an index stores
chunks with their vectors under a :class:`DocumentRecord`, and retrieval returns :class:`Hit` s.
Everything here is plain data so parsers, indexes and the answerer never import each other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

import numpy as np

ElementKind = Literal[
    "title", "heading", "paragraph", "list_item", "table", "code", "note", "header", "footer", "caption"
]


@dataclass(frozen=True)
class Element:
    """One structural piece of a parsed document, with where it sits (for citations)."""

    kind: ElementKind
    """What the piece is; ``table`` elements also carry ``rows``."""
    text: str
    """The text; for a table, its rows rendered one per line as ``| a | b |``."""
    heading_path: tuple[str, ...] = ()
    """Headings above this element, outermost first (document title excluded)."""
    page: int | None = None
    """1-based PDF page (also the page of an OCR'd image inside a PDF)."""
    sheet: str | None = None
    """Spreadsheet sheet name (XLSX) for tables from workbooks."""
    slide: int | None = None
    """1-based slide number (PPTX); speaker notes have ``kind='note'``."""
    rows: tuple[tuple[str, ...], ...] | None = None
    """Table cells row by row, header row first; chunkers split tables only between rows."""
    header_rows: int = 0
    """How many leading ``rows`` are headers (repeated at the top of every table chunk)."""
    ocr: bool = False
    """True when the text came from OCR rather than a text layer."""
    level: int = 0
    """Heading level (1 = top) for ``heading`` elements; 0 otherwise."""


@dataclass(frozen=True)
class ParsedDocument:
    """A parsed file: its elements in reading order and what the parser noticed on the way."""

    source: str
    """The file name as the user knows it (a path relative to the ingested folder)."""
    format: str
    """Parser that read it: pdf, docx, xlsx, csv, pptx, html, md, txt or image."""
    title: str
    """Document title (metadata, first heading, or the file name)."""
    elements: tuple[Element, ...]
    pages: int = 0
    """Pages, slides or sheets the file has (0 when the format has none)."""
    warnings: tuple[str, ...] = ()
    """Non-fatal problems (an unreadable embedded image, a skipped empty sheet...)."""


@dataclass(frozen=True)
class Chunk:
    """A retrievable passage: the unit that is embedded, indexed, cited and shown."""

    chunk_id: str
    """Stable id ``<doc_id>:<ordinal>``."""
    doc_id: str
    ordinal: int
    """Position of the chunk in its document, from 0."""
    text: str
    """The passage itself, as shown to users and put into prompts."""
    heading_path: tuple[str, ...] = ()
    page_start: int | None = None
    page_end: int | None = None
    sheet: str | None = None
    slide: int | None = None
    n_tokens: int = 0
    """Length in tokens of the embedding model's tokenizer (the budget the chunker kept)."""

    def embed_text(self, title: str = "") -> str:
        """What is embedded and lexically indexed: title and headings give context to the passage."""
        head = " / ".join(p for p in (title, *self.heading_path) if p)
        return f"{head}\n{self.text}" if head else self.text

    def locator(self) -> str:
        """Human-readable place inside the source: ``p. 3``, ``pp. 3-4``, ``sheet Q3``, ``slide 2``."""
        if self.page_start is not None:
            end = self.page_end if self.page_end is not None else self.page_start
            return f"p. {self.page_start}" if end == self.page_start else f"pp. {self.page_start}-{end}"
        if self.sheet is not None:
            return f"sheet {self.sheet}"
        if self.slide is not None:
            return f"slide {self.slide}"
        return ""


@dataclass(frozen=True)
class DocumentRecord:
    """One document of a knowledge base as the index keeps it."""

    doc_id: str
    source: str
    """Path relative to the ingested folder (or the file name); unique within a KB."""
    content_hash: str
    """sha256 of the file bytes: unchanged files are skipped on re-ingest."""
    format: str
    title: str
    size_bytes: int
    n_chunks: int = 0
    tags: tuple[str, ...] = ()
    modified: datetime | None = None
    """File modification time, used by the date filter."""
    added: datetime | None = None


@dataclass(frozen=True)
class SearchFilter:
    """Metadata restrictions applied inside the index, before top-k (so k hits still come back)."""

    sources: tuple[str, ...] = ()
    """Only these documents (by ``source``); empty = all."""
    tags: tuple[str, ...] = ()
    """Only documents with at least one of these tags; empty = all."""
    modified_from: datetime | None = None
    modified_to: datetime | None = None

    def is_empty(self) -> bool:
        return not (self.sources or self.tags or self.modified_from or self.modified_to)


@dataclass(frozen=True)
class Hit:
    """A chunk found by a search, with its score and rank in that search (1 = best)."""

    chunk: Chunk
    score: float
    rank: int
    document: DocumentRecord
    via: Literal["lexical", "dense", "hybrid", "rerank"] = "hybrid"
    scores: Mapping[str, float] = field(default_factory=dict)
    """Per-retriever scores that fed the fused one (``lexical``, ``dense``, ``rerank``)."""


@dataclass(frozen=True)
class IndexStats:
    documents: int
    chunks: int
    dim: int
    bytes_on_disk: int


class ChunkIndex(Protocol):
    """Where a knowledge base keeps documents, chunks, vectors and the lexical index together.

    Implementations: the embedded one (local files, no server) and PostgreSQL + pgvector. Both
    replace or delete a document's chunks in the lexical and the vector index as one unit: a crash
    mid-write leaves the previous state of that document, never half of it.
    """

    dim: int

    def upsert_document(self, doc: DocumentRecord, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        """Add ``doc`` or replace all of its chunks; ``vectors[i]`` is the unit vector of ``chunks[i]``."""
        ...

    def delete_document(self, doc_id: str) -> bool:
        """Remove the document and all its chunks; False when it was not there."""
        ...

    def documents(self) -> list[DocumentRecord]: ...

    def get_document(self, doc_id: str) -> DocumentRecord | None: ...

    def lexical_search(self, query: str, k: int, flt: SearchFilter | None = None) -> list[Hit]:
        """BM25-style ranking of chunks for ``query`` (Chinese segmented with jieba)."""
        ...

    def dense_search(self, vector: np.ndarray, k: int, flt: SearchFilter | None = None) -> list[Hit]:
        """Nearest chunks by cosine similarity to the unit ``vector``."""
        ...

    def get_chunks(self, chunk_ids: Sequence[str]) -> list[Chunk]: ...

    def stats(self) -> IndexStats: ...

    def close(self) -> None: ...

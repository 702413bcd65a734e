"""The SQLite file of an embedded index: schema, connections, and the filter clause.

One file is the whole truth of a knowledge base (documents, chunks, float32 vectors, FTS5 terms),
so an upsert or delete is one SQLite transaction and a crash leaves the previous state; the
lexical statistics (``term_df`` and the ``lex_*`` totals in ``meta``, see ``_lexical``) are written
in that same transaction. Every
write bumps ``generation`` and logs removed chunk ids in ``removed``: that is how an in-memory or
on-disk ANN graph, which is only a cache, learns what it has missed.

An encrypted knowledge base keeps the same file encrypted with SQLCipher (pages, WAL and FTS5
shadow tables alike: AES-256 with a per-page HMAC), keyed with a raw 256-bit key derived from
the KB's data key; a plaintext one uses the standard library's ``sqlite3``. Errors of both
drivers are caught through :data:`Error` and :data:`IntegrityError`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from onebox.errors import (
    ConflictError,
    DependencyMissingError,
    IndexCorruptedError,
    KeyUnavailableError,
    StoreError,
    TamperedError,
)
from onebox.rag.index import _lexical
from onebox.rag.index._records import epoch
from onebox.rag.types import SearchFilter

SCHEMA_VERSION = 1
SQLITE_MAGIC = b"SQLite format 3\x00"
"""The first bytes of every plaintext SQLite file (an encrypted one starts with random salt)."""

try:
    from sqlcipher3 import dbapi2 as _cipher
except ImportError:  # a broken install; only encrypted indexes need it, and they say so
    _cipher = None

Error: tuple[type[Exception], ...] = (sqlite3.Error,) + ((_cipher.Error,) if _cipher else ())
"""Catch-all of both drivers (their exception classes are unrelated)."""
IntegrityError: tuple[type[Exception], ...] = (sqlite3.IntegrityError,) + (
    (_cipher.IntegrityError,) if _cipher else ()
)
DatabaseError: tuple[type[Exception], ...] = (sqlite3.DatabaseError,) + (
    (_cipher.DatabaseError,) if _cipher else ()
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    doc_no INTEGER PRIMARY KEY AUTOINCREMENT,
    doc_id TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL UNIQUE,
    content_hash TEXT NOT NULL,
    format TEXT NOT NULL,
    title TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    n_chunks INTEGER NOT NULL,
    tags TEXT NOT NULL,
    modified TEXT,
    added TEXT,
    modified_ts REAL
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    chunk_id TEXT NOT NULL UNIQUE,
    doc_no INTEGER NOT NULL REFERENCES documents(doc_no),
    doc_id TEXT NOT NULL,
    ordinal INTEGER NOT NULL,
    text TEXT NOT NULL,
    heading_path TEXT NOT NULL,
    page_start INTEGER,
    page_end INTEGER,
    sheet TEXT,
    slide INTEGER,
    n_tokens INTEGER NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(doc_no);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(terms, tokenize = 'unicode61 remove_diacritics 0');
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_vocab USING fts5vocab(chunks_fts, row);
CREATE TABLE IF NOT EXISTS term_df (term TEXT PRIMARY KEY, df INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS removed (id INTEGER PRIMARY KEY, gen INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS removed_gen ON removed(gen);
"""


def _driver() -> ModuleType:
    if _cipher is None:
        raise DependencyMissingError(
            "encrypted knowledge-base indexes need SQLCipher: pip install sqlcipher3-binary",
            package="sqlcipher3-binary",
        )
    return _cipher


def index_key(data_key: bytes) -> bytes:
    """The SQLCipher key of an index: HKDF of the KB's data key, so the key that seals its files
    with AES-GCM is never also used as a raw SQLCipher (AES-CBC + HMAC) key."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"onebox kb index sqlcipher v1").derive(
        data_key
    )


def encrypt_copy(src: Path, dst: Path, key: bytes) -> None:
    """Write an encrypted copy of the plaintext index ``src`` to ``dst`` (``sqlcipher_export``);
    the caller swaps it in. ``src`` is read in one transaction, so writers wait for it."""
    drv = _driver()
    conn = drv.connect(str(src), isolation_level=None)
    try:
        conn.execute("PRAGMA cipher_log_level = NONE")
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute(f"ATTACH DATABASE ? AS sealed KEY \"x'{key.hex()}'\"", (str(dst),))
        conn.execute("SELECT sqlcipher_export('sealed')").fetchall()
        conn.execute("DETACH DATABASE sealed")
    finally:
        conn.close()


def is_plaintext(path: Path) -> bool:
    """Whether ``path`` is a plaintext SQLite file (not an encrypted one, nor missing)."""
    return _head(path) == SQLITE_MAGIC


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(len(SQLITE_MAGIC))
    except OSError:
        return b""


def connect(path: Path, key: bytes | None = None) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, waiting on writers.

    With ``key`` (32 bytes) the file is SQLCipher-encrypted: the key is the first statement on
    the connection, and a key that does not open the file is a :class:`KeyUnavailableError`
    (SQLCipher cannot tell a wrong key from a damaged first page; the message says both). A
    plaintext SQLite file where an encrypted one belongs is refused as tampered, never used."""
    head = _head(path)
    try:
        if key is None:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=60.0)
        else:
            if head == SQLITE_MAGIC:
                raise TamperedError(
                    f"{path} is a plaintext SQLite file, but this knowledge base is encrypted: "
                    "the index was replaced; restore it from a backup or rebuild the KB",
                    path=str(path),
                )
            conn = _driver().connect(str(path), isolation_level=None, check_same_thread=False, timeout=60.0)
            conn.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
            conn.execute("PRAGMA cipher_log_level = NONE")  # wrong keys are reported, not logged
            conn.execute("PRAGMA temp_store = MEMORY")  # no plaintext sort or temp-table files
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # a wrong key fails here
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=60000")
        conn.execute("PRAGMA cache_size=-65536")
    except DatabaseError as exc:
        if key is not None and "not a database" in str(exc):  # SQLITE_NOTADB: the key does not open it
            raise KeyUnavailableError(
                f"{path} cannot be decrypted with its knowledge base's data key: the key records "
                "belong to another home or were restored from another backup, or the file is damaged",
                path=str(path),
            ) from exc
        hint = "" if head in (b"", SQLITE_MAGIC) else " (damaged, or encrypted and opened without its key)"
        raise IndexCorruptedError(f"{path} is not a readable knowledge-base index{hint}: {exc}") from exc
    return conn  # type: ignore[no-any-return]


def init_schema(conn: sqlite3.Connection, dim: int, path: Path) -> None:
    """Create the tables on first open; on later opens check that the dimension matches."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        for stmt in _SCHEMA.split(";"):
            if stmt.strip():
                conn.execute(stmt)
        got = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if not got:
            conn.executemany(
                "INSERT INTO meta(key, value) VALUES (?, ?)",
                [("schema", str(SCHEMA_VERSION)), ("dim", str(dim)), ("generation", "0"), ("floor", "0")],
            )
        if "lex_tokens" not in got:  # new, or written before term_df existed: count once
            _lexical.backfill(conn)
        conn.execute("COMMIT")
    except DatabaseError as exc:
        _rollback(conn)
        raise IndexCorruptedError(f"{path} is not a readable knowledge-base index: {exc}") from exc
    if got and int(got.get("dim", -1)) != dim:
        raise IndexCorruptedError(
            f"{path} holds {got.get('dim')}-dimensional vectors, not {dim}: "
            "the knowledge base was built with another embedding model",
            path=str(path),
        )
    if got and int(got.get("schema", -1)) != SCHEMA_VERSION:
        raise IndexCorruptedError(f"{path} has index schema {got.get('schema')}, expected {SCHEMA_VERSION}")


@contextmanager
def write(conn: sqlite3.Connection, path: Path, what: str, conflict: str | None = None) -> Iterator[None]:
    """One write transaction: taken up front (``BEGIN IMMEDIATE``, so readers never see half of it),
    committed on success, rolled back on any error; SQLite errors become onebox errors naming
    ``what``, and an integrity violation becomes a conflict starting with ``conflict`` when given."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("COMMIT")
    except IntegrityError as exc:
        _rollback(conn)
        if conflict is None:
            raise wrap(exc, path, what) from exc
        raise ConflictError(f"{conflict}: {exc} (a chunk id is used by another document)") from exc
    except Error as exc:
        _rollback(conn)
        raise wrap(exc, path, what) from exc
    except BaseException:
        _rollback(conn)
        raise


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def meta_int(conn: sqlite3.Connection, key: str) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return int(row[0]) if row else 0


def set_meta(conn: sqlite3.Connection, key: str, value: int) -> None:
    conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, str(value)))


def doc_filter(flt: SearchFilter | None, alias: str = "d") -> tuple[str, list[Any]]:
    """``WHERE``-ready SQL over ``documents`` for a filter (``"1"`` when there is none)."""
    if flt is None or flt.is_empty():
        return "1", []
    parts: list[str] = []
    args: list[Any] = []
    if flt.sources:
        parts.append(f"{alias}.source IN ({','.join('?' * len(flt.sources))})")
        args.extend(flt.sources)
    if flt.tags:
        marks = ",".join("?" * len(flt.tags))
        parts.append(f"EXISTS (SELECT 1 FROM json_each({alias}.tags) t WHERE t.value IN ({marks}))")
        args.extend(flt.tags)
    if flt.modified_from is not None:
        parts.append(f"{alias}.modified_ts >= ?")
        args.append(epoch(flt.modified_from))
    if flt.modified_to is not None:
        parts.append(f"{alias}.modified_ts <= ?")
        args.append(epoch(flt.modified_to))
    return " AND ".join(parts), args


def wrap(exc: Exception, path: Path, what: str) -> Exception:
    """The onebox error for a SQLite failure: corruption is an integrity problem, the rest a store one."""
    if isinstance(exc, DatabaseError) and "malformed" in str(exc).lower():
        return IndexCorruptedError(f"{path}: {what} failed, the index file is damaged: {exc}", path=str(path))
    return StoreError(f"{path}: {what} failed: {exc}", path=str(path))

"""The append-only, hash-chained audit log.

Each record's ``hash`` is an HMAC-SHA256, under the box's audit key, of the previous record's hash
and the record's own fields. Editing a record breaks its hash; deleting one breaks the sequence and
the next record's link; recomputing the chain needs the key, which lives outside the database.
Deleting records at the end is caught by the *head* file (last sequence number and hash) kept
next to the key. Appends race safely: the sequence number is the primary key, so two writers that
read the same head collide and the loser retries on the new head.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError as SAIntegrityError

from onebox.fsutil import atomic_write_text
from onebox.store.db import Database
from onebox.store.tables import AuditRecord

GENESIS = "0" * 64
OUTCOMES = ("ok", "denied", "failed")


@dataclass(frozen=True)
class AuditEntry:
    """What happened, by whom, to what, from where."""

    action: str
    actor: str
    outcome: str = "ok"
    project_id: str | None = None
    resource_type: str = ""
    resource_id: str = ""
    source: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ChainProblem:
    seq: int
    kind: str  # edited | deleted | truncated
    message: str


@dataclass
class VerifyReport:
    checked: int = 0
    head_seq: int = 0
    problems: list[ChainProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "head_seq": self.head_seq,
            "problems": [p.__dict__ for p in self.problems],
        }


def _canonical(seq: int, at: datetime, e: AuditEntry) -> bytes:
    fields = [
        seq,
        at.astimezone(UTC).isoformat(timespec="microseconds"),
        e.actor,
        e.project_id,
        e.action,
        e.resource_type,
        e.resource_id,
        e.outcome,
        e.source,
        e.details,
    ]
    return json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str).encode()


def record_hash(key: bytes, prev_hash: str, seq: int, at: datetime, entry: AuditEntry) -> str:
    return hmac.new(key, prev_hash.encode() + b"\n" + _canonical(seq, at, entry), hashlib.sha256).hexdigest()


def _entry_of(r: AuditRecord) -> AuditEntry:
    return AuditEntry(
        action=r.action,
        actor=r.actor,
        outcome=r.outcome,
        project_id=r.project_id,
        resource_type=r.resource_type,
        resource_id=r.resource_id,
        source=r.source,
        details=dict(r.details or {}),
    )


class AuditLog:
    """Appends to and verifies the chain in ``db`` under ``key``; ``head_path`` guards the tail."""

    def __init__(self, db: Database, key: bytes, head_path: Path) -> None:
        self.db = db
        self.key = key
        self.head_path = Path(head_path)

    def append(self, entry: AuditEntry, *, now: datetime | None = None) -> int:
        if entry.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}")
        # JSON round trip: the stored details must hash the same when read back.
        entry = AuditEntry(
            **{**entry.__dict__, "details": json.loads(json.dumps(entry.details, default=str))}
        )
        for _ in range(50):
            at = now or datetime.now(UTC)
            at = (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC)
            try:
                with self.db.session() as s:
                    last = s.scalar(select(AuditRecord).order_by(AuditRecord.seq.desc()).limit(1))
                    seq = (last.seq + 1) if last else 1
                    prev = last.hash if last else GENESIS
                    digest = record_hash(self.key, prev, seq, at, entry)
                    s.add(
                        AuditRecord(
                            seq=seq,
                            at=at,
                            actor=entry.actor,
                            project_id=entry.project_id,
                            action=entry.action,
                            resource_type=entry.resource_type,
                            resource_id=entry.resource_id,
                            outcome=entry.outcome,
                            source=entry.source,
                            details=entry.details,
                            prev_hash=prev,
                            hash=digest,
                        )
                    )
            except SAIntegrityError:
                continue  # another writer took this sequence number: chain onto theirs
            self._advance_head(seq, digest)
            return seq
        raise RuntimeError("could not append to the audit log: too much contention")

    # -- the head file ---------------------------------------------------------------------------
    def _advance_head(self, seq: int, digest: str) -> None:
        """Move the head forward (never back: writers may finish out of order). Written by rename,
        so a copied home whose files are hard links never shares its head with the original."""
        self.head_path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(self.head_path.with_name(self.head_path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self.head()
            if current is not None and seq <= current[0]:
                return
            atomic_write_text(self.head_path, f"{seq} {digest}\n")  # 0600, fsynced, renamed
        finally:
            os.close(lock)

    def head(self) -> tuple[int, str] | None:
        with contextlib.suppress(FileNotFoundError):
            return _parse_head(self.head_path.read_text())
        return None

    # -- reading ---------------------------------------------------------------------------------
    def _records(self, batch: int = 1000) -> Iterator[AuditRecord]:
        after = 0
        while True:
            with self.db.session() as s:
                rows = list(
                    s.scalars(
                        select(AuditRecord)
                        .where(AuditRecord.seq > after)
                        .order_by(AuditRecord.seq)
                        .limit(batch)
                    )
                )
                for r in rows:
                    s.expunge(r)
            if not rows:
                return
            yield from rows
            after = rows[-1].seq

    def verify(self) -> VerifyReport:
        report = VerifyReport()
        prev_hash, prev_seq = GENESIS, 0
        hashes: dict[int, str] = {}
        for r in self._records():
            report.checked += 1
            if r.seq != prev_seq + 1:
                report.problems.append(
                    ChainProblem(
                        r.seq,
                        "deleted",
                        f"records {prev_seq + 1}..{r.seq - 1} are missing (deleted)",
                    )
                )
            elif r.prev_hash != prev_hash:
                report.problems.append(
                    ChainProblem(r.seq, "edited", f"record {r.seq} does not link to {prev_seq}")
                )
            expected = record_hash(self.key, r.prev_hash, r.seq, r.at, _entry_of(r))
            if not hmac.compare_digest(expected, r.hash):
                report.problems.append(
                    ChainProblem(r.seq, "edited", f"record {r.seq} ({r.action} by {r.actor}) was changed")
                )
            prev_hash, prev_seq = r.hash, r.seq
            hashes[r.seq] = r.hash
        report.head_seq = prev_seq
        head = self.head()
        if head is not None:
            seq, digest = head
            if seq > prev_seq:
                report.problems.append(
                    ChainProblem(seq, "truncated", f"records {prev_seq + 1}..{seq} at the end were deleted")
                )
            elif seq in hashes and hashes[seq] != digest:
                report.problems.append(
                    ChainProblem(seq, "edited", f"record {seq} differs from the recorded head")
                )
        return report

    def count(self) -> int:
        with self.db.session() as s:
            return int(s.scalar(select(func.count()).select_from(AuditRecord)) or 0)


def _parse_head(text: str) -> tuple[int, str] | None:
    parts = text.split()
    if len(parts) != 2 or not parts[0].isdigit():
        return None
    return int(parts[0]), parts[1]

"""The one exception tree of onebox.

Every error a user can cause or meet derives from :class:`OneboxError`. Each class carries a
stable ``code`` (for JSON output and, later, the HTTP error table) and a process ``exit_code``
for the CLI. Third-party errors are wrapped at the boundary with ``raise ... from exc``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input: where (``field`` or ``line``), why, and how to fix it."""

    field: str
    reason: str
    fix: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        tail = f" ({self.fix})" if self.fix else ""
        return f"{where}{self.field}: {self.reason}{tail}"

    def as_dict(self) -> dict[str, Any]:
        return {"field": self.field, "reason": self.reason, "fix": self.fix, "line": self.line}


class OneboxError(Exception):
    """Base of all onebox errors."""

    code = "error"
    exit_code = 1

    def __init__(self, message: str, *, problems: list[Problem] | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.problems: list[Problem] = list(problems or [])
        self.details: dict[str, Any] = details

    def __str__(self) -> str:
        if not self.problems:
            return self.message
        lines = [self.message, *(f"  - {p}" for p in self.problems)]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.problems:
            out["problems"] = [p.as_dict() for p in self.problems]
        if self.details:
            out["details"] = self.details
        return out


class ConfigError(OneboxError):
    """Settings or options are invalid; ``problems`` lists every bad field at once."""

    code = "invalid_config"
    exit_code = 4


class InvalidInputError(OneboxError):
    """Input from outside (file, argument, body) is malformed; nothing was changed."""

    code = "invalid_input"
    exit_code = 4


class UnsupportedFormatError(InvalidInputError):
    """The file's format is not one onebox can read."""

    code = "unsupported_format"


class EmptyInputError(InvalidInputError):
    """The file or input holds no data."""

    code = "empty_input"


class InputTooLargeError(InvalidInputError):
    """The input exceeds a configured size limit."""

    code = "input_too_large"


class EncodingError(InvalidInputError):
    """Text is not valid UTF-8."""

    code = "invalid_encoding"


class SchemaError(InvalidInputError):
    """Records do not match any supported schema (e.g. CSV with missing columns)."""

    code = "invalid_schema"


class TooManyBadRowsError(InvalidInputError):
    """More rows failed validation than the configured share allows; nothing was imported."""

    code = "too_many_bad_rows"


class NotAModelError(InvalidInputError):
    """A path given as a model is not a loadable model."""

    code = "not_a_model"


class NotFoundError(OneboxError):
    """A named resource does not exist (in the caller's project)."""

    code = "not_found"
    exit_code = 3


class ConflictError(OneboxError):
    """The request conflicts with existing state (duplicate name, concurrent change)."""

    code = "conflict"
    exit_code = 5


class AlreadyExistsError(ConflictError):
    """A resource with that name already exists."""

    code = "already_exists"


class InUseError(ConflictError):
    """The resource is used by another (alias, deployment, lineage) and cannot be removed."""

    code = "in_use"


class IntegrityError(OneboxError):
    """Stored data failed verification (checksum mismatch, missing blob)."""

    code = "integrity_error"
    exit_code = 6


class ArtifactCorruptedError(IntegrityError):
    """A blob's content no longer matches its sha256 address."""

    code = "artifact_corrupted"


class ArtifactMissingError(IntegrityError):
    """A blob referenced by metadata is absent from the artifact store."""

    code = "artifact_missing"


class DependencyMissingError(OneboxError):
    """An optional dependency needed for this operation is not installed."""

    code = "dependency_missing"
    exit_code = 7


class StoreError(OneboxError):
    """The metadata store failed (database unreachable, migration failed)."""

    code = "store_error"
    exit_code = 8


class ModelLoadError(OneboxError):
    """A model could not be loaded or converted."""

    code = "model_load_error"
    exit_code = 9


@dataclass
class ErrorList:
    """Collects problems so validation can report all of them at once."""

    problems: list[Problem] = field(default_factory=list)

    def add(self, field_name: str, reason: str, fix: str | None = None, line: int | None = None) -> None:
        self.problems.append(Problem(field_name, reason, fix, line))

    def raise_if_any(self, message: str, cls: type[OneboxError] = ConfigError) -> None:
        if self.problems:
            raise cls(message, problems=self.problems)


class UnknownJobTypeError(InvalidInputError):
    """A job names a type that no handler is registered for."""

    code = "unknown_job_type"


class InsufficientResourcesError(InvalidInputError):
    """A job asks for more CPUs, GPUs or memory than the machine has: it could never start."""

    code = "insufficient_resources"


class JobStateError(ConflictError):
    """The job's status does not allow the operation (cancel a finished job, retry a running one)."""

    code = "job_state"


class NoCheckpointError(JobStateError):
    """``resume`` was asked of a job that never recorded a checkpoint."""

    code = "no_checkpoint"


class ExecutorBusyError(ConflictError):
    """Another local executor already supervises the jobs of this home."""

    code = "executor_busy"


class JobFailedError(OneboxError):
    """Raised by a job handler for an expected failure (diverged loss, bad input found late);
    the job fails with this message and no traceback in its error field."""

    code = "job_failed"


class TrainingError(OneboxError):
    """A training run failed while running (not because of its inputs)."""

    code = "training_failed"
    exit_code = 1


class TrainingDivergedError(TrainingError):
    """The loss or the gradients became NaN/Inf; the run stopped without saving the broken state."""

    code = "training_diverged"


class OverloadedError(OneboxError):
    """The server's admission queue is full; retry after ``details['retry_after']`` seconds.
    Nothing was started for the request (HTTP 429 with ``Retry-After``)."""

    code = "overloaded"
    exit_code = 10


class UnavailableError(OneboxError):
    """A deployment exists but none of its workers can answer right now (starting, crashed and
    restarting): HTTP 503."""

    code = "unavailable"
    exit_code = 11


class DocumentError(InvalidInputError):
    """A document cannot be ingested (corrupt, encrypted, empty, oversized, unsupported). The
    ingestion report lists it with this reason; the rest of the batch goes on."""

    code = "document_error"


class EncryptedDocumentError(DocumentError):
    """The document is password-protected; decrypt it before adding it to a knowledge base."""

    code = "document_encrypted"


class CorruptDocumentError(DocumentError):
    """The file is damaged or not what its extension says."""

    code = "document_corrupt"


class IndexCorruptedError(IntegrityError):
    """A knowledge-base index on disk does not match its records and could not be rebuilt."""

    code = "index_corrupted"


class AuthenticationError(OneboxError):
    """No valid identity: missing, malformed, wrong, expired or revoked credentials (HTTP 401).
    The message never says whether a user or key exists."""

    code = "authentication_failed"
    exit_code = 12


class PermissionDeniedError(OneboxError):
    """The identity is valid but lacks the role or scope for the action (HTTP 403)."""

    code = "permission_denied"
    exit_code = 13


class PolicyDeniedError(PermissionDeniedError):
    """A use policy (who, when, where) forbids the action; ``details['condition']`` names the
    condition that failed. Audited."""

    code = "policy_denied"


class QuotaExceededError(OverloadedError):
    """A per-key or per-project quota is used up (HTTP 429 with ``Retry-After``)."""

    code = "quota_exceeded"


class TamperedError(IntegrityError):
    """Encrypted data, a licence or the audit chain failed its authentication check: someone or
    something changed it."""

    code = "tampered"


class KeyUnavailableError(OneboxError):
    """Encrypted artifacts exist but the master key is missing or wrong."""

    code = "key_unavailable"
    exit_code = 14

"""SQLAlchemy models of the metadata store; the same models run on SQLite and PostgreSQL.

Every resource has an id, a project, a name, a status and created/updated timestamps, and
points at what it came from (lineage) through foreign keys. Schema changes go through Alembic
migrations in ``store/migrations``; never ``create_all`` outside tests of the migrations.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    """A readable, collision-free id such as ``mv_3f2a...``; the prefix says the resource kind."""
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone on its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


JSONType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Timestamped:
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), default=utcnow, onupdate=utcnow, nullable=False
    )


class Project(Timestamped, Base):
    """A tenant: every other resource belongs to exactly one project."""

    __tablename__ = "projects"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True, nullable=False)
    status: Mapped[str] = mapped_column(String(32), default="active", nullable=False)
    description: Mapped[str] = mapped_column(Text, default="", nullable=False)
    # quotas (migration 0003); None means unlimited
    rpm_limit: Mapped[int | None] = mapped_column(Integer)
    """Requests per minute on ``/v1`` for the whole project."""
    tpm_limit: Mapped[int | None] = mapped_column(Integer)
    """Tokens (prompt + completion) per minute on ``/v1`` for the whole project."""
    max_concurrent_jobs: Mapped[int | None] = mapped_column(Integer)
    """Jobs of the project that may be queued or running at once."""
    storage_limit_bytes: Mapped[int | None] = mapped_column(BigInteger)
    """Bytes of model versions, dataset versions and documents the project may hold."""


class ProjectScoped(Timestamped):
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True, nullable=False)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    status: Mapped[str] = mapped_column(String(32), nullable=False)


class Model(ProjectScoped, Base):
    """A named model line (e.g. ``smollm2-135m-instruct``) whose versions are immutable."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("project_id", "name_key"),)
    name_key: Mapped[str] = mapped_column(String(128), nullable=False)
    """Case-folded name: uniqueness ignores case in every script, on every database."""
    kind: Mapped[str] = mapped_column(String(32), nullable=False)  # chat | embedding | ...
    description: Mapped[str] = mapped_column(Text, default="", nullable=False)
    builtin: Mapped[str | None] = mapped_column(String(64))  # catalog key when built in

    versions: Mapped[list[ModelVersion]] = relationship(
        back_populates="model", order_by="ModelVersion.version", foreign_keys="ModelVersion.model_id"
    )


class ModelVersion(ProjectScoped, Base):
    """An immutable model version: a manifest of blobs plus lineage and facts about it."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version"),)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True, nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    format: Mapped[str] = mapped_column(String(32), nullable=False)  # safetensors | gguf | lora | st
    manifest_digest: Mapped[str | None] = mapped_column(String(64))
    checksum: Mapped[str | None] = mapped_column(String(64))  # sha256 of the manifest
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    license: Mapped[str | None] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(Text, default="", nullable=False)
    architecture: Mapped[str | None] = mapped_column(String(128))
    parameters: Mapped[int | None] = mapped_column(BigInteger)
    config: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict, nullable=False)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict, nullable=False)
    error: Mapped[str | None] = mapped_column(Text)
    # lineage
    base_version_id: Mapped[str | None] = mapped_column(ForeignKey("model_versions.id"))
    dataset_version_id: Mapped[str | None] = mapped_column(ForeignKey("dataset_versions.id"))
    # jobs also point at model versions (their inputs): the cycle is closed after both exist.
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", use_alter=True))

    model: Mapped[Model] = relationship(back_populates="versions", foreign_keys=[model_id])


class ModelAlias(ProjectScoped, Base):
    """A movable pointer (``prod``, ``staging``) from a model to one of its versions."""

    __tablename__ = "model_aliases"
    __table_args__ = (UniqueConstraint("model_id", "name"),)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True, nullable=False)
    version_id: Mapped[str] = mapped_column(ForeignKey("model_versions.id"), index=True, nullable=False)


class Dataset(ProjectScoped, Base):
    """A named dataset whose versions are immutable and content-hashed."""

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("project_id", "name_key"),)
    name_key: Mapped[str] = mapped_column(String(128), nullable=False)
    """Case-folded name (see Model.name_key)."""
    description: Mapped[str] = mapped_column(Text, default="", nullable=False)


class DatasetVersion(ProjectScoped, Base):
    """One imported, validated, cleaned and split snapshot of a dataset."""

    __tablename__ = "dataset_versions"
    # content_hash is unique among *ready* versions only (a deleted one may be imported again),
    # which the service enforces; the index makes that lookup cheap.
    __table_args__ = (
        UniqueConstraint("dataset_id", "version"),
        Index("ix_dataset_versions_content", "dataset_id", "content_hash"),
    )
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True, nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    content_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    manifest_digest: Mapped[str] = mapped_column(String(64), nullable=False)
    schema: Mapped[str] = mapped_column(String(32), nullable=False)  # messages | alpaca | ... (source)
    source_format: Mapped[str] = mapped_column(String(16), nullable=False)
    source_name: Mapped[str] = mapped_column(Text, default="", nullable=False)
    num_train: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    num_validation: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    num_quarantined: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    report: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict, nullable=False)
    # lineage
    parent_version_id: Mapped[str | None] = mapped_column(ForeignKey("dataset_versions.id"))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", use_alter=True))


class Job(ProjectScoped, Base):
    """A unit of work run by an executor (training, evaluation, conversion...)."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status_priority", "status", "priority"),)
    type: Mapped[str] = mapped_column(String(32), nullable=False)
    priority: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict, nullable=False)
    resources: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict, nullable=False)
    progress: Mapped[float] = mapped_column(Float, default=0.0, nullable=False)
    result: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict, nullable=False)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    owner: Mapped[str | None] = mapped_column(String(128))
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # lineage
    input_model_version_id: Mapped[str | None] = mapped_column(ForeignKey("model_versions.id"))
    input_dataset_version_id: Mapped[str | None] = mapped_column(ForeignKey("dataset_versions.id"))
    # execution (migration 0002). ``attempts`` counts worker launches since the last submit or
    # manual retry; a worker that dies is re-queued while attempts < max_attempts.
    max_attempts: Mapped[int] = mapped_column(Integer, default=3, server_default=text("3"), nullable=False)
    handler: Mapped[str | None] = mapped_column(String(256))  # import path resolved at submit
    pid: Mapped[int | None] = mapped_column(Integer)
    host: Mapped[str | None] = mapped_column(String(255))
    devices: Mapped[list[Any]] = mapped_column(
        JSONType, default=list, server_default=text("'[]'"), nullable=False
    )  # GPU indices the executor gave the worker
    cancel_requested: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false(), nullable=False
    )
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    log_path: Mapped[str | None] = mapped_column(Text)
    metrics: Mapped[dict[str, Any]] = mapped_column(
        JSONType, default=dict, server_default=text("'{}'"), nullable=False
    )  # latest values reported through progress()
    checkpoint_step: Mapped[int | None] = mapped_column(Integer)
    checkpoint_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    exit_code: Mapped[int | None] = mapped_column(Integer)


class JobMetric(Base):
    """One point of a job's metric time series (loss per step...)."""

    __tablename__ = "job_metrics"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True, nullable=False)
    attempt: Mapped[int] = mapped_column(Integer, default=1, nullable=False)
    step: Mapped[int] = mapped_column(Integer, nullable=False)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    value: Mapped[float | None] = mapped_column(Float)  # None for NaN/inf, which not every backend stores
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)


class Deployment(ProjectScoped, Base):
    """A served model version (plus adapters) behind the gateway."""

    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("project_id", "name"),)
    model_version_id: Mapped[str] = mapped_column(ForeignKey("model_versions.id"), index=True, nullable=False)
    alias: Mapped[str | None] = mapped_column(String(64))
    replicas: Mapped[int] = mapped_column(Integer, default=1, nullable=False)
    config: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict, nullable=False)


class KnowledgeBase(ProjectScoped, Base):
    """A document collection indexed for retrieval with one embedding model version."""

    __tablename__ = "knowledge_bases"
    __table_args__ = (UniqueConstraint("project_id", "name"),)
    description: Mapped[str] = mapped_column(Text, default="", nullable=False)
    embedding_version_id: Mapped[str | None] = mapped_column(ForeignKey("model_versions.id"))
    config: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict, nullable=False)


class Event(Base):
    """Something that happened to a resource: the audit trail of the registry and jobs."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_resource", "resource_type", "resource_id"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str | None] = mapped_column(ForeignKey("projects.id"), index=True)
    resource_type: Mapped[str] = mapped_column(String(32), nullable=False)
    resource_id: Mapped[str | None] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(64), nullable=False)
    severity: Mapped[str] = mapped_column(String(16), default="info", nullable=False)
    message: Mapped[str] = mapped_column(Text, default="", nullable=False)
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True, nullable=False)


class Blob(Base):
    """A content-addressed blob known to the store (the bytes live in the artifact backend).

    Its reference count is the number of :class:`ArtifactRef` rows naming it; a blob with none
    is garbage for ``onebox gc``."""

    __tablename__ = "blobs"
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)


class ArtifactRef(Base):
    """One owner's reference to a blob; a blob with no references is garbage."""

    __tablename__ = "artifact_refs"
    __table_args__ = (UniqueConstraint("digest", "owner_type", "owner_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    digest: Mapped[str] = mapped_column(ForeignKey("blobs.digest"), index=True, nullable=False)
    owner_type: Mapped[str] = mapped_column(String(32), nullable=False)
    owner_id: Mapped[str] = mapped_column(String(32), index=True, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)


# -- security (migration 0003) ------------------------------------------------------------------


class User(Timestamped, Base):
    """A person who logs in; what they may do in a project comes from their membership's role."""

    __tablename__ = "users"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    """Case-folded login name."""
    display_name: Mapped[str] = mapped_column(String(128), default="", nullable=False)
    password_hash: Mapped[str] = mapped_column(String(255), nullable=False)  # argon2id
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false(), nullable=False)
    """System administrator: every project, user management, audit."""
    status: Mapped[str] = mapped_column(String(16), default="active", nullable=False)  # active | disabled
    must_change_password: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false(), nullable=False
    )
    failed_logins: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"), nullable=False)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Membership(Timestamped, Base):
    """A user's role in one project (admin, operator, developer or viewer)."""

    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("user_id", "project_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True, nullable=False)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True, nullable=False)
    role: Mapped[str] = mapped_column(String(16), nullable=False)


class ApiKey(Timestamped, Base):
    """A secret for scripts and OpenAI clients, bound to one user and one project. Only a hash of
    the secret is stored; the prefix identifies the key in lists and logs."""

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    prefix: Mapped[str] = mapped_column(String(24), unique=True, nullable=False)
    secret_hash: Mapped[str] = mapped_column(String(64), nullable=False)  # sha256 of the whole key
    name: Mapped[str] = mapped_column(String(128), default="", nullable=False)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True, nullable=False)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True, nullable=False)
    scopes: Mapped[list[Any]] = mapped_column(JSONType, default=list, nullable=False)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    rpm_limit: Mapped[int | None] = mapped_column(Integer)
    tpm_limit: Mapped[int | None] = mapped_column(Integer)


class WebSession(Base):
    """A console login: the cookie carries the token, the store keeps only its hash."""

    __tablename__ = "web_sessions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the cookie token
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True, nullable=False)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), nullable=False)
    csrf_token: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    source: Mapped[str] = mapped_column(String(255), default="", nullable=False)


class AuditRecord(Base):
    """One append-only, hash-chained audit record; ``hash`` covers ``prev_hash`` and the fields."""

    __tablename__ = "audit_log"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, index=True)
    actor: Mapped[str] = mapped_column(String(128), nullable=False)
    project_id: Mapped[str | None] = mapped_column(String(32), index=True)
    action: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    resource_type: Mapped[str] = mapped_column(String(32), default="", nullable=False)
    resource_id: Mapped[str] = mapped_column(String(128), default="", nullable=False)
    outcome: Mapped[str] = mapped_column(String(16), nullable=False)  # ok | denied | failed
    source: Mapped[str] = mapped_column(String(255), default="", nullable=False)
    details: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict, nullable=False)
    prev_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    hash: Mapped[str] = mapped_column(String(64), nullable=False)


class UsePolicy(Timestamped, Base):
    """Who may use a model version or dataset version, when, and on which machines."""

    __tablename__ = "use_policies"
    __table_args__ = (UniqueConstraint("resource_type", "resource_id"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True, nullable=False)
    resource_type: Mapped[str] = mapped_column(String(32), nullable=False)  # model_version | dataset_version
    resource_id: Mapped[str] = mapped_column(String(32), nullable=False)
    rules: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict, nullable=False)
    """Allowed projects/users/roles, valid_from/until, time-of-day windows, host fingerprints."""
    created_by: Mapped[str] = mapped_column(String(128), default="", nullable=False)


# -- monitoring (migration 0004) ----------------------------------------------------------------


class Node(Base):
    """A machine that runs onebox: its identity, software versions, devices and heartbeat."""

    __tablename__ = "nodes"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    """The node's name in monitoring (``node_name`` setting; default its host name)."""
    hostname: Mapped[str] = mapped_column(String(255), nullable=False)
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    interval_s: Mapped[float] = mapped_column(Float, default=10.0, nullable=False)
    """The node's collection interval: a heartbeat older than a few of these means it is lost."""
    healthy: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)
    problems: Mapped[list[Any]] = mapped_column(JSONType, default=list, nullable=False)
    """Failed health checks of the latest pass, one line each."""
    versions: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict, nullable=False)
    info: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict, nullable=False)
    """CPUs, memory, GPUs (index, name, uuid, memory), boot time."""
    summary: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict, nullable=False)
    """The node-level samples of the latest pass (metric -> value), for cluster aggregates."""


class MetricSeries(Base):
    """One time series: a metric of a resource at a level, as seen from a node."""

    __tablename__ = "metric_series"
    __table_args__ = (
        UniqueConstraint("node", "level", "resource", "metric"),
        Index("ix_metric_series_level_metric", "level", "metric"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    node: Mapped[str] = mapped_column(String(128), nullable=False)
    level: Mapped[str] = mapped_column(String(16), nullable=False)  # component | node | cluster | task
    resource: Mapped[str] = mapped_column(String(255), nullable=False)  # cpu0, fs:/, gpu1, job:job_...
    metric: Mapped[str] = mapped_column(String(128), nullable=False)
    name: Mapped[str] = mapped_column(String(255), default="", nullable=False)
    """Display name of the resource (a job's or deployment's name, a GPU's model)."""
    project_id: Mapped[str | None] = mapped_column(String(32), index=True)
    """Task-level series belong to a project (only its members see them); None for the hardware."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)


class MetricPoint(Base):
    """One value of a series: raw (``resolution`` 0) or the mean of a ``resolution``-second bucket."""

    __tablename__ = "metric_points"
    __table_args__ = (Index("ix_metric_points_resolution_ts", "resolution", "ts"),)
    series_id: Mapped[int] = mapped_column(ForeignKey("metric_series.id"), primary_key=True)
    resolution: Mapped[int] = mapped_column(Integer, primary_key=True)
    ts: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    """Unix time in milliseconds (a rollup's bucket start)."""
    value: Mapped[float] = mapped_column(Float, nullable=False)


# -- global search (migration 0005) -------------------------------------------------------------


class SearchDoc(Base):
    """One document of the global search: a resource, a knowledge-base document's title and source,
    or one job log line.

    ``name_terms``/``body_terms`` hold :func:`onebox.rag.lexical.terms` of its text, each prefixed
    with the scope that may see it (``p<project>_知识库``): a term's document frequency, and every
    posting list a query walks, is per scope, so one project's queries never touch, count or rank
    by another's documents. The index over them is backend-native and made by migration 0005
    alone (SQLite FTS5 table ``search_fts``; PostgreSQL ``tsv`` column with a GIN index)."""

    __tablename__ = "search_docs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    """Assigned by the indexer (under its write lock); the FTS5 rowid on SQLite."""
    key: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    resource_id: Mapped[str] = mapped_column(String(128), nullable=False)
    owner: Mapped[str] = mapped_column(String(160), index=True, nullable=False)
    """``kind:id`` of the resource the document belongs to (a job for its log lines): deleting
    the resource deletes every document it owns."""
    project_id: Mapped[str | None] = mapped_column(String(32))
    scope: Mapped[str] = mapped_column(String(40), nullable=False)
    title: Mapped[str] = mapped_column(Text, default="", nullable=False)
    detail: Mapped[str] = mapped_column(Text, default="", nullable=False)
    status: Mapped[str | None] = mapped_column(String(32))
    line: Mapped[int | None] = mapped_column(Integer)
    name_terms: Mapped[str] = mapped_column(Text, default="", nullable=False)
    body_terms: Mapped[str] = mapped_column(Text, default="", nullable=False)
    length: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    """Tokens of the document as BM25 counts them (its kind, name and body terms)."""
    stamp: Mapped[str] = mapped_column(String(64), default="", nullable=False)
    """The source row's change marker when indexed (its updated_at): unchanged rows are skipped."""
    created_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """When the resource (not the document) was created."""


class SearchTerm(Base):
    """Document frequency of one scoped term: what plans a query and ranks its candidates."""

    __tablename__ = "search_terms"
    __table_args__: ClassVar[dict[str, Any]] = {"sqlite_with_rowid": False}
    term: Mapped[str] = mapped_column(Text, primary_key=True)
    df: Mapped[int] = mapped_column(Integer, nullable=False)


class SearchMark(Base):
    """How far the search index has caught up: per source a time, per job log an offset, and the
    corpus totals BM25 needs (``stats:docs``, ``stats:tokens``)."""

    __tablename__ = "search_marks"
    source: Mapped[str] = mapped_column(String(200), primary_key=True)
    mark: Mapped[str] = mapped_column(Text, nullable=False)


# The search index catches up from these before each query (migration 0005).
for _table in (
    Model,
    ModelVersion,
    Dataset,
    DatasetVersion,
    Job,
    Deployment,
    KnowledgeBase,
    User,
    Membership,
):
    Index(f"ix_{_table.__tablename__}_updated_at", _table.__table__.c.updated_at)

SEARCH_NATIVE = frozenset({"tsv", "ix_search_docs_tsv"})
"""Backend-native search objects outside the models: PostgreSQL's ``tsv`` column and its GIN
index (SQLite's FTS5 tables are recognised by their ``search_fts`` prefix)."""


def in_models(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Alembic ``include_object``: what schema comparison should see (not the native search index)."""
    if reflected and compare_to is None and name:
        if type_ == "table" and name.startswith("search_fts"):
            return False
        if type_ in ("column", "index") and name in SEARCH_NATIVE:
            return False
    return True

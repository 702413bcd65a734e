"""One settings object, read once from the environment (``ONEBOX_*``) and passed down.

The same three switches move onebox from the embedded default to cluster mode:
``ONEBOX_DATABASE_URL`` (SQLite file -> PostgreSQL), ``ONEBOX_ARTIFACTS`` (local folder ->
fsspec URL such as ``s3://bucket/prefix``) and, later, ``ONEBOX_EXECUTOR``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from onebox.errors import ConfigError, Problem


class Settings(BaseSettings):
    """All of onebox's configuration; every field can be set as ``ONEBOX_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="ONEBOX_", extra="ignore", validate_default=True)

    home: Path = Field(default_factory=lambda: Path.home() / ".onebox")
    """Root folder for the embedded default: database file, artifacts, caches."""

    database_url: str | None = None
    """SQLAlchemy URL of the metadata store; default ``sqlite:///<home>/onebox.db``.
    Use ``postgresql+psycopg://user:pass@host/db`` in cluster mode."""

    artifacts: str | None = None
    """Where blobs live: a local folder (default ``<home>/artifacts``) or an fsspec URL."""

    project: str = "default"
    """Project (tenant) that commands act in when none is named."""

    max_import_bytes: int = 512 * 1024**2
    """Largest dataset file accepted by ``onebox data import`` (bytes)."""

    gc_grace_seconds: int = 3600
    """Unreferenced blobs younger than this are kept by ``onebox gc`` (an import may still be
    about to reference them)."""

    kb_index_url: str | None = None
    """Where knowledge-base indexes live: unset keeps each in a folder under ``<home>/kbs``
    (embedded); a ``postgresql://`` URL of a database with pgvector holds them all (cluster mode)."""

    @field_validator("kb_index_url")
    @classmethod
    def _pg_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
            raise ValueError("must be a postgresql:// URL (or unset for indexes under the home folder)")
        return v or None

    @field_validator("max_import_bytes", "gc_grace_seconds")
    @classmethod
    def _non_negative(cls, v: int) -> int:
        if v < 0:
            raise ValueError("must be >= 0")
        return v

    @field_validator("project")
    @classmethod
    def _project_name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    @property
    def db_url(self) -> str:
        """The effective database URL."""
        return self.database_url or f"sqlite:///{self.home / 'onebox.db'}"

    @property
    def artifacts_url(self) -> str:
        """The effective artifact location (folder path or fsspec URL)."""
        return self.artifacts or str(self.home / "artifacts")

    @property
    def cache_dir(self) -> Path:
        """Local scratch and checkout cache (never the source of truth)."""
        return self.home / "cache"


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment, reporting every bad field at once as ConfigError."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = [
            Problem(
                field="ONEBOX_" + str(err["loc"][0]).upper() if err["loc"] else "settings",
                reason=err["msg"],
                fix="set a valid value in the environment",
            )
            for err in exc.errors()
        ]
        raise ConfigError("invalid onebox settings", problems=problems) from exc

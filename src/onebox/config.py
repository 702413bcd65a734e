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

    encrypt_artifacts: bool = False
    """Encrypt every new artifact at rest (envelope AES-256-GCM); needs a master key."""

    master_key: str | None = Field(default=None, repr=False)
    """The master key as 64 hex digits (prefer ``master_key_file``: environments leak)."""

    master_key_file: Path | None = None
    """A file (mode 0600) holding the master key as 64 hex digits."""

    kms_provider: str | None = None
    """``module:attribute`` of a KMS provider that wraps and unwraps data keys instead of a local
    master key (see ``onebox.security.keys``)."""

    metrics_public: bool = False
    """Serve ``/metrics`` without credentials (for a Prometheus that cannot send a bearer token);
    it then shows every project's task series, as it does to administrators."""

    admin_password: str | None = Field(default=None, repr=False)
    """Password of the first admin, for unattended setups; without it ``onebox init`` generates
    one, prints it once, and requires a change at first login."""

    login_max_failures: int = 5
    """Failed logins in a row after which a user is locked out for ``login_lockout_seconds``."""

    login_lockout_seconds: int = 300
    """How long a lockout lasts (seconds)."""

    session_ttl_seconds: int = 8 * 3600
    """Lifetime of a console login session (seconds)."""

    max_upload_bytes: int = 512 * 1024**2
    """Largest request body the API accepts (bytes); larger uploads get 413."""

    node_name: str | None = None
    """This machine's name in monitoring (the ``node`` label); default: its host name."""

    monitor_interval_s: float = 10.0
    """Seconds between two collection passes of the monitor inside ``onebox serve`` (0: off)."""

    monitor_raw_retention_s: int = 24 * 3600
    """How long raw samples are kept (seconds); older ones survive only as rollups."""

    monitor_rollup_s: int = 60
    """Width of the rollup buckets (seconds): each holds the mean of the raw samples in it."""

    monitor_rollup_retention_s: int = 30 * 24 * 3600
    """How long rollups are kept (seconds)."""

    alerts_enabled: bool = True
    """Evaluate alert rules after each monitoring pass of ``onebox serve``."""

    alert_rules_file: Path | None = None
    """A YAML file of alert rules (and webhooks) merged over the shipped ones: a rule with a
    shipped rule's name replaces it, ``enabled: false`` switches it off (see
    ``onebox events rules``)."""

    alert_webhooks: list[str] = Field(default_factory=list)
    """URLs that receive every alert of severity warning or above as a JSON POST (a JSON list in
    the environment: ``ONEBOX_ALERT_WEBHOOKS='["https://hooks.example.com/x"]'``). Only the
    operator sets them: no API request can add one."""

    alert_webhook_max_attempts: int = 5
    """Delivery attempts per alert and webhook before it is recorded as failed (exponential
    backoff from 2 s between them)."""

    alert_webhook_timeout_s: float = 5.0
    """How long one webhook delivery attempt may take (seconds)."""

    @field_validator("monitor_interval_s")
    @classmethod
    def _interval(cls, v: float) -> float:
        if v != 0 and not 1 <= v <= 3600:
            raise ValueError("must be 0 (off) or between 1 and 3600 seconds")
        return v

    @field_validator("alert_webhook_max_attempts")
    @classmethod
    def _attempts(cls, v: int) -> int:
        if not 1 <= v <= 100:
            raise ValueError("must be between 1 and 100")
        return v

    @field_validator("alert_webhook_timeout_s")
    @classmethod
    def _webhook_timeout(cls, v: float) -> float:
        if not 0.1 <= v <= 300:
            raise ValueError("must be between 0.1 and 300 seconds")
        return v

    @field_validator("monitor_rollup_s")
    @classmethod
    def _rollup(cls, v: int) -> int:
        if not 1 <= v <= 86400:
            raise ValueError("must be between 1 and 86400 seconds")
        return v

    @field_validator("kb_index_url")
    @classmethod
    def _pg_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
            raise ValueError("must be a postgresql:// URL (or unset for indexes under the home folder)")
        return v or None

    @field_validator(
        "max_import_bytes",
        "gc_grace_seconds",
        "login_max_failures",
        "login_lockout_seconds",
        "session_ttl_seconds",
        "max_upload_bytes",
        "monitor_raw_retention_s",
        "monitor_rollup_retention_s",
    )
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
    def secrets_dir(self) -> Path:
        """Key files (audit key, generated master key), mode 0700."""
        return self.home / "secrets"

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

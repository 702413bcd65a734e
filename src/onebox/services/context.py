"""The application context: settings, metadata store and blob store, opened once per process."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from onebox.config import Settings, load_settings
from onebox.errors import StoreError
from onebox.security.audit import AuditEntry, AuditLog
from onebox.security.principal import Principal, local_principal
from onebox.security.secrets import load_or_create
from onebox.store.backends import backend_from_url
from onebox.store.blobs import BlobStore
from onebox.store.db import Database, is_initialised


@dataclass
class App:
    settings: Settings
    db: Database
    blobs: BlobStore
    principal: Principal | None = None
    """Who acts through this context; None is the operator at the box's shell (the CLI)."""
    shared: dict[str, object] = field(default_factory=dict, repr=False)
    """Lazily built helpers shared by every context derived with ``acting_as``/``in_project``
    (``replace`` copies the reference), so a request does not reload the audit key."""

    @property
    def staging_dir(self) -> Path:
        """Scratch space for imports and conversions; removed after each operation."""
        path = self.settings.cache_dir / "staging"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def close(self) -> None:
        """Release the store; only the context ``open_app`` returned, never one from ``acting_as``."""
        self.db.dispose()

    def in_project(self, project: str) -> App:
        """The same store acting in another project (by name), as the local operator."""
        return replace(self, settings=self.settings.model_copy(update={"project": project}), principal=None)

    def acting_as(self, principal: Principal) -> App:
        """The same store seen by ``principal``: services act in its project."""
        settings = self.settings.model_copy(update={"project": principal.project})
        return replace(self, settings=settings, principal=principal)

    def actor(self) -> Principal:
        if self.principal is not None:
            return self.principal
        from onebox.services.projects import get_project

        with self.db.session() as s:
            project = get_project(s, self.settings.project)
            return local_principal(project.id, project.name)

    def audit_log_denied(
        self, action: str, resource_id: str, source: str, reason: str, **details: object
    ) -> None:
        """A failed authentication: there is no principal, only what the caller claimed."""
        self.audit_log.append(
            AuditEntry(
                action=action,
                actor="anonymous",
                outcome="denied",
                resource_type="api_key" if action == "auth.key" else "user",
                resource_id=resource_id,
                source=source,
                details={"reason": reason, **details},
            )
        )

    @property
    def audit_log(self) -> AuditLog:
        log = self.shared.get("audit_log")
        if not isinstance(log, AuditLog):
            key = load_or_create(self.settings.secrets_dir / "audit.key")
            log = self.shared["audit_log"] = AuditLog(self.db, key, self.settings.secrets_dir / "audit.head")
        return log

    def audit(
        self,
        action: str,
        *,
        outcome: str = "ok",
        resource_type: str = "",
        resource_id: str = "",
        principal: Principal | None = None,
        **details: object,
    ) -> None:
        """Append one record for an action by ``principal`` (default: this context's actor)."""
        who = principal or self.actor()
        self.audit_log.append(
            AuditEntry(
                action=action,
                actor=who.actor,
                outcome=outcome,
                project_id=who.project_id,
                resource_type=resource_type,
                resource_id=resource_id,
                source=who.source,
                details=dict(details),
            )
        )


def open_app(settings: Settings | None = None, *, migrate: bool = True) -> App:
    """Open the store. With ``migrate`` the schema is brought up to date (cheap when it is)."""
    settings = settings or load_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    db = Database(settings.db_url)
    if migrate:
        db.migrate()
    elif not is_initialised(db.engine):
        raise StoreError(f"onebox is not initialised at {settings.db_url}; run `onebox init` first")
    from onebox.security.envelope import codec_for  # encryption at rest: plain unless a key is set

    blobs = BlobStore(
        backend_from_url(settings.artifacts_url), settings.cache_dir / "checkouts", codec_for(settings)
    )
    app = App(settings, db, blobs)
    from onebox.services.projects import ensure_project

    with db.session() as s:
        ensure_project(s, settings.project)
    return app

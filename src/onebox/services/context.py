"""The application context: settings, metadata store and blob store, opened once per process."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from onebox.config import Settings, load_settings
from onebox.errors import StoreError
from onebox.store.backends import backend_from_url
from onebox.store.blobs import BlobStore
from onebox.store.db import Database, is_initialised


@dataclass
class App:
    settings: Settings
    db: Database
    blobs: BlobStore

    @property
    def staging_dir(self) -> Path:
        """Scratch space for imports and conversions; removed after each operation."""
        path = self.settings.cache_dir / "staging"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def close(self) -> None:
        self.db.dispose()


def open_app(settings: Settings | None = None, *, migrate: bool = True) -> App:
    """Open the store. With ``migrate`` the schema is brought up to date (cheap when it is)."""
    settings = settings or load_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    db = Database(settings.db_url)
    if migrate:
        db.migrate()
    elif not is_initialised(db.engine):
        raise StoreError(f"onebox is not initialised at {settings.db_url}; run `onebox init` first")
    blobs = BlobStore(backend_from_url(settings.artifacts_url), settings.cache_dir / "checkouts")
    app = App(settings, db, blobs)
    from onebox.services.projects import ensure_project

    with db.session() as s:
        ensure_project(s, settings.project)
    return app

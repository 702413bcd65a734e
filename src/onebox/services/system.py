"""First-run setup: create the home folder, migrate the store, install the built-in models, and
create the first administrator (never with a default password)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from onebox.config import Settings
from onebox.models.catalog import CATALOG
from onebox.progress import ProgressFn, null_progress
from onebox.services import identity, models
from onebox.services.context import App, open_app
from onebox.store.db import current_revision


def init(
    settings: Settings,
    *,
    builtins: bool = True,
    progress_for: Callable[[str], ProgressFn] = lambda _key: null_progress,
) -> tuple[App, dict[str, Any]]:
    """Idempotent: running it again only installs what is missing."""
    app = open_app(settings, migrate=True)
    installed = []
    if builtins:
        for key in CATALOG:
            reg = models.install_builtin(app, key, progress=progress_for(key))
            installed.append({"name": key, "version": reg.version.version, "created": reg.created})
    admin = identity.bootstrap_admin(app)
    return app, {
        "home": str(settings.home),
        "database": settings.db_url,
        "artifacts": settings.artifacts_url,
        "schema_revision": current_revision(app.db.engine),
        "project": settings.project,
        "builtins": installed,
        "admin": {
            "created": admin["created"],
            "username": admin["user"]["username"] if admin["created"] else None,
            "password": admin.get("password"),
        },
    }

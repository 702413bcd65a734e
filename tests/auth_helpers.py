"""Credentials for tests that talk to a real gateway: the gateway lets nobody in without them."""

from __future__ import annotations

from onebox.config import Settings
from onebox.services import apikeys, identity
from onebox.services.context import open_app

ADMIN_PASSWORD = "correct-horse-battery-staple"


def admin_key(settings: Settings, *, scopes: list[str] | None = None) -> str:
    """Bootstrap the admin (once) and mint an API key for it in the default project."""
    app = open_app(settings)
    try:
        identity.bootstrap_admin(app, password=ADMIN_PASSWORD)
        return str(apikeys.create_key(app, name="tests", username="admin", scopes=scopes)["secret"])
    finally:
        app.close()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}

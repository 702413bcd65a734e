"""Per-process CLI state: settings read once, the app context opened lazily and closed at exit."""

from __future__ import annotations

import atexit
from functools import cache
from typing import Annotated

import typer

from onebox.config import Settings, load_settings
from onebox.services.context import App, open_app

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]


@cache
def settings() -> Settings:
    return load_settings()


@cache
def get_app() -> App:
    app = open_app(settings())
    atexit.register(app.close)
    return app

"""Optional imports of the index backends, gated in one place with the install hint."""

from __future__ import annotations

from types import ModuleType

from onebox.errors import DependencyMissingError


def psycopg() -> ModuleType:
    """psycopg 3, for the PostgreSQL + pgvector index (cluster mode)."""
    try:
        import psycopg as mod
    except ImportError as exc:
        raise DependencyMissingError(
            "the PostgreSQL knowledge-base index needs psycopg 3: pip install 'onebox[cluster]'"
        ) from exc
    return mod

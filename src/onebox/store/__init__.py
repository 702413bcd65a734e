"""Metadata store (SQLAlchemy + Alembic) and the content-addressed artifact store."""

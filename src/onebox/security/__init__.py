"""Security: identities, roles, API keys, use policies, encryption at rest, audit.

Plain functions over plain data and SQLAlchemy sessions; no HTTP here (the API maps these
errors to 401/403/429 through the one table in ``api/errors.py``)."""

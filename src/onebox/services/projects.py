"""Projects (tenants). Every resource lives in one; the embedded default has ``default``."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from onebox.errors import NotFoundError
from onebox.services.names import validate_name
from onebox.store.tables import Project, new_id


def ensure_project(session: Session, name: str) -> Project:
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        project = Project(id=new_id("prj"), name=validate_name(name, "project"), status="active")
        session.add(project)
        session.flush()
    return project


def get_project(session: Session, name: str) -> Project:
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        raise NotFoundError(f"project {name!r} does not exist")
    return project

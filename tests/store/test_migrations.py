"""The Alembic migrations are the schema: they must match the models on both databases."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, text

from onebox.store.db import Database, alembic_config, current_revision
from onebox.store.tables import Base, Dataset, DatasetVersion, Model, ModelVersion, Project, in_models, new_id

TABLES = {
    "projects",
    "models",
    "model_versions",
    "model_aliases",
    "datasets",
    "dataset_versions",
    "jobs",
    "job_metrics",
    "deployments",
    "knowledge_bases",
    "events",
    "blobs",
    "artifact_refs",
    "users",
    "memberships",
    "api_keys",
    "web_sessions",
    "audit_log",
    "use_policies",
    "nodes",
    "metric_series",
    "metric_points",
    "search_docs",
    "search_terms",
    "search_marks",
}


def test_upgrade_creates_every_table_and_matches_models(db_url: str) -> None:
    db = Database(db_url)
    db.migrate()
    db.migrate()  # idempotent
    assert set(inspect(db.engine).get_table_names()) >= TABLES
    assert current_revision(db.engine) == "0005"
    with db.engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True, "include_object": in_models}),
            Base.metadata,
        )
    assert diff == []
    db.dispose()


def test_downgrade_then_upgrade(db_url: str) -> None:
    db = Database(db_url)
    db.migrate()
    command.downgrade(alembic_config(db.engine), "base")
    assert "models" not in inspect(db.engine).get_table_names()
    db.migrate()
    assert set(inspect(db.engine).get_table_names()) >= TABLES
    db.dispose()


def test_sqlite_uses_wal_and_foreign_keys(tmp_path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    db.migrate()
    with db.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    db.dispose()


def test_resources_round_trip_with_lineage(db_url: str) -> None:
    db = Database(db_url)
    db.migrate()
    with db.session() as s:
        p = Project(id=new_id("prj"), name="acme")
        s.add(p)
        s.flush()
        m = Model(
            id=new_id("mdl"), project_id=p.id, name="模型-a", name_key="模型-a", status="ready", kind="chat"
        )
        ds = Dataset(id=new_id("ds"), project_id=p.id, name="数据", name_key="数据", status="ready")
        s.add_all([m, ds])
        s.flush()
        dv = DatasetVersion(
            id=new_id("dv"),
            project_id=p.id,
            dataset_id=ds.id,
            name="v1",
            version=1,
            status="ready",
            content_hash="h",
            manifest_digest="d",
            schema="messages",
            source_format="jsonl",
            report={"说明": "中文"},
        )
        base = ModelVersion(
            id=new_id("mv"),
            project_id=p.id,
            model_id=m.id,
            name="v1",
            version=1,
            status="ready",
            format="safetensors",
        )
        s.add_all([dv, base])
        s.flush()
        child = ModelVersion(
            id=new_id("mv"),
            project_id=p.id,
            model_id=m.id,
            name="v2",
            version=2,
            status="ready",
            format="lora",
            base_version_id=base.id,
            dataset_version_id=dv.id,
        )
        s.add(child)
    with db.session() as s:
        got = s.scalar(select(ModelVersion).where(ModelVersion.version == 2))
        assert got is not None and got.base_version_id == base.id and got.dataset_version_id == dv.id
        assert got.created_at.tzinfo is not None
        assert s.scalar(select(DatasetVersion)).report == {"说明": "中文"}
        assert s.scalar(select(Model)).name == "模型-a"
    db.dispose()

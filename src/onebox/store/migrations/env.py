"""Alembic environment: runs against the engine onebox hands in (never a URL in an ini file)."""

from alembic import context

from onebox.store.tables import Base, in_models

config = context.config
engine = config.attributes["engine"]

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_object=in_models,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()

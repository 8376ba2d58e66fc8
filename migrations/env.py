"""Alembic environment: runs imgsearch's revisions inside its own PostgreSQL schema.

Used both by ``imgsearch db upgrade`` (the library passes its connection and schema) and by plain ``alembic``
in a checkout (``-x url=...`` / ``-x schema=...``, else ``IMGSEARCH_DATABASE_URL`` / ``IMGSEARCH_SCHEMA``, else the
embedded server and the ``imgsearch`` schema).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from imgsearch import db, roles, schema
from imgsearch.config import Settings
from imgsearch.tables import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection, schema_name: str) -> None:
    schema.prepare_migration(connection, schema_name)
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=schema.VERSION_TABLE,
        version_table_schema=schema_name,
    )
    with context.begin_transaction():
        context.run_migrations()
    # The embedded server's own reader and writer roles follow every change of the schema.
    roles.grant_embedded_roles(connection, schema_name)


def run_migrations_online() -> None:
    """Migrate through the caller's connection if it passed one, else connect as the CLI would."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection, config.attributes["schema"])
        return
    x = context.get_x_argument(as_dictionary=True)
    settings = Settings.from_env(database_url=x.get("url"), schema=x.get("schema"))
    engine = db.create_engine(db.resolve_url(settings, "admin"), schema=settings.schema)
    try:
        with engine.begin() as conn:
            _run(conn, settings.schema)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported: run them against a database")
run_migrations_online()

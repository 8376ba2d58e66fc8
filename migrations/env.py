"""Alembic environment: runs the catalogue migrations against the configured PostgreSQL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from imgsearch import db
from imgsearch.config import Settings
from imgsearch.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Migrate through the caller's connection if it passed one, else connect as the CLI would."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url")
    engine = db.create_engine(db.resolve_url(Settings.from_env(database_url=url)))
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported: run them against a database")
run_migrations_online()

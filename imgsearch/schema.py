"""The catalogue's schema: Alembic migrations into imgsearch's own PostgreSQL schema, and its version checks.

Everything imgsearch creates (tables, indexes, SQL functions and its own Alembic version table) lives in one
PostgreSQL schema, ``imgsearch`` unless configured (:attr:`imgsearch.config.Settings.schema`), so that it can be
installed into a shop's existing database beside the shop's own tables and migrations, and removed again. The
migrations ship inside the package (``imgsearch.migrations``; ``migrations/`` in a checkout), so an installed
imgsearch migrates a database without the repository.
"""

from __future__ import annotations

from functools import cache
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from imgsearch.config import DEFAULT_SCHEMA, check_schema_name
from imgsearch.db import is_conflict, retrying, schema_of, translate_error
from imgsearch.errors import BusyError, DatabaseUnavailableError, SchemaError, SchemaTooNewError

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory


def _migrations_dir() -> Path:
    spec = find_spec("imgsearch.migrations")
    assert spec is not None and spec.submodule_search_locations, "imgsearch.migrations is missing from the install"
    return Path(next(iter(spec.submodule_search_locations)))


#: Where the Alembic environment and revisions are, in a checkout (``migrations/``) or an installed package.
MIGRATIONS_DIR = _migrations_dir()

#: imgsearch's Alembic version table, inside its schema (never the shop's ``public.alembic_version``).
VERSION_TABLE = "alembic_version"

#: How long a schema change waits for a lock before it gives way (SET lock_timeout), and the pauses between
#: its attempts: searches never queue behind it for longer than LOCK_TIMEOUT.
LOCK_TIMEOUT = "2s"
LOCK_RETRY_WAITS = (1.0, 2.0, 4.0, 8.0)

#: Revisions made before imgsearch had a schema of its own: their catalogues live in ``public``.
LEGACY_REVISIONS = ("0001", "0002")


def alembic_config(connection: Connection | None = None, schema: str = DEFAULT_SCHEMA) -> Config:
    """An Alembic configuration for the packaged migrations (no alembic.ini needed)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["schema"] = check_schema_name(schema)
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@cache
def script_directory() -> ScriptDirectory:
    """The packaged revisions (read once per process)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest revision this version of imgsearch knows."""
    head = script_directory().get_current_head()
    assert head is not None
    return head


def known_revisions() -> set[str]:
    """Every revision this version of imgsearch knows."""
    return {r.revision for r in script_directory().walk_revisions()}


def current_revision(bind: Engine | Connection, schema: str | None = None) -> str | None:
    """The revision imgsearch's schema is at, or ``None`` if it has never been migrated."""
    from alembic.runtime.migration import MigrationContext

    schema = schema or schema_of(bind)
    try:
        if isinstance(bind, Engine):
            with bind.connect() as conn:
                return _current(conn, schema, MigrationContext)
        return _current(bind, schema, MigrationContext)
    except DBAPIError as exc:
        raise translate_error(exc) from None


def _current(conn: Connection, schema: str, context: type) -> str | None:
    return context.configure(conn, opts={"version_table_schema": schema}).get_current_revision()


def _check_not_newer(current: str | None) -> None:
    if current is not None and current not in known_revisions():
        raise SchemaTooNewError(
            f"this catalogue was migrated by a newer imgsearch (revision {current}); upgrade the package"
        )


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring imgsearch's schema up to ``revision`` (default: the newest). Running it again is a no-op.

    Raises:
        SchemaTooNewError: the database was migrated by a newer imgsearch.
        SchemaError: ``revision`` is unknown, or the vector extension is missing and cannot be installed.
    """
    _migrate(engine, "upgrade", revision)


def downgrade(engine: Engine, revision: str = "-1") -> None:
    """Step imgsearch's schema back to ``revision`` (default one back; ``base`` removes the schema entirely)."""
    _migrate(engine, "downgrade", revision)
    if current_revision(engine) is None:
        schema = schema_of(engine)
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{schema}".{VERSION_TABLE}'))
            # RESTRICT: a schema that still holds anything (someone else's objects) is kept.
            if not conn.execute(
                sa.text("SELECT EXISTS (SELECT 1 FROM pg_class WHERE relnamespace = to_regnamespace(:s))"),
                {"s": schema},
            ).scalar_one():
                conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}"'))


def _migrate(engine: Engine, direction: str, revision: str) -> None:
    from alembic import command
    from alembic.util import CommandError

    schema = schema_of(engine)
    _check_not_newer(current_revision(engine))

    def attempt() -> None:
        try:
            with engine.begin() as conn:
                getattr(command, direction)(alembic_config(conn, schema), revision)
        except CommandError as exc:
            raise SchemaError(f"cannot {direction} to {revision!r}: {exc}") from None
        except DBAPIError as exc:
            if is_conflict(exc):
                raise
            raise translate_error(exc) from None

    # Each attempt waits at most LOCK_TIMEOUT for a lock (searches queue behind a waiting schema change, so it
    # must not wait long), then gives way for a moment before trying again; so does a deadlock's victim.
    try:
        retrying(attempt, LOCK_RETRY_WAITS, lambda exc: isinstance(exc, BusyError) or is_conflict(exc))
    except DBAPIError as exc:
        if not is_conflict(exc):
            raise
        raise BusyError(
            f"cannot {direction}: the catalogue is locked by another session (a deadlock on every attempt); "
            "try again when searches and writes have paused"
        ) from None


def require_schema(engine: Engine) -> None:
    """Raise :class:`SchemaError` unless imgsearch's schema is at this version's newest revision."""
    try:
        current = current_revision(engine)
    except SchemaError:
        raise
    except DBAPIError as exc:
        raise DatabaseUnavailableError(f"cannot read the schema version: {exc.orig}") from None
    if current is None:
        raise SchemaError(
            f"the database has no imgsearch schema yet (schema {schema_of(engine)!r}): run `imgsearch db upgrade`"
        )
    _check_not_newer(current)
    if current != head_revision():
        raise SchemaError(
            f"the database schema is at revision {current}, this imgsearch needs {head_revision()}: "
            "run `imgsearch db upgrade`"
        )


# --- what the migration environment (migrations/env.py) does before running revisions -------------------------


def prepare_migration(conn: Connection, schema: str) -> None:
    """Make ``conn`` ready to run imgsearch's revisions in ``schema``, inside its transaction.

    Takes a lock so that concurrent upgrades run one after the other, installs the vector extension if it is
    missing, creates the schema, adopts a catalogue made before imgsearch had its own schema (its version row
    moves from ``public.alembic_version`` into imgsearch's version table; revision 0003 then moves the tables),
    and points the transaction's search_path at the schema, then the vector extension's schema.
    """
    check_schema_name(schema)
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('imgsearch migrations ' || :s))"), {"s": schema})
    conn.execute(sa.text("SELECT set_config('lock_timeout', :t, true)"), {"t": LOCK_TIMEOUT})
    _ensure_vector_extension(conn)
    conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    _adopt_legacy_version(conn, schema)
    conn.execute(
        sa.text(
            "SELECT set_config('search_path', concat_ws(', ', quote_ident(:s), ("
            "SELECT quote_ident(n.nspname) FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
            "WHERE e.extname = 'vector')), true)"
        ),
        {"s": schema},
    )
    # pgvector's settings (hnsw.iterative_scan, which the search functions SET) exist once its library is loaded
    # in the session; before that a role without superuser may not name them ("permission denied to set
    # parameter"), as in a downgrade that re-creates older functions first thing. Using the type loads it.
    conn.execute(sa.text("SELECT vector_dims('[1]'::vector)"))


def _ensure_vector_extension(conn: Connection) -> None:
    if conn.execute(sa.text("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'vector')")).scalar_one():
        return
    try:
        with conn.begin_nested():
            conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS vector"))
    except DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise SchemaError(
            f"the pgvector extension is not installed in this database and cannot be installed by this role "
            f"({reason}): ask a superuser to run CREATE EXTENSION vector, then retry"
        ) from None


def _adopt_legacy_version(conn: Connection, schema: str) -> None:
    from alembic.runtime.migration import MigrationContext

    if schema == "public":
        return
    found = conn.execute(
        sa.text(
            "SELECT to_regclass(:ours) IS NOT NULL, to_regclass('public.alembic_version') IS NOT NULL, "
            "to_regclass('public.embedding_space') IS NOT NULL"
        ),
        {"ours": f'"{schema}".{VERSION_TABLE}'},
    ).one()
    ours, public_versions, public_catalogue = found
    if ours or not public_versions or not public_catalogue:
        return
    legacy = [
        v
        for v in conn.execute(sa.text("SELECT version_num FROM public.alembic_version")).scalars()
        if v in LEGACY_REVISIONS
    ]
    if len(legacy) != 1:
        return
    MigrationContext.configure(conn, opts={"version_table_schema": schema}).stamp(script_directory(), legacy[0])
    conn.execute(sa.text("DELETE FROM public.alembic_version WHERE version_num = :v"), {"v": legacy[0]})
    if not conn.execute(sa.text("SELECT EXISTS (SELECT 1 FROM public.alembic_version)")).scalar_one():
        conn.execute(sa.text("DROP TABLE public.alembic_version"))

"""Connecting to the catalogue database and managing its schema (Alembic migrations)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

from imgsearch import embedded
from imgsearch.config import Settings
from imgsearch.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    ImgsearchError,
    InvalidQueryError,
    SchemaError,
    UnknownSkuError,
)

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
ALEMBIC_INI = MIGRATIONS_DIR.parent / "alembic.ini"


def resolve_url(settings: Settings) -> str:
    """The configured database URL, or the embedded server's (started on demand)."""
    if settings.database_url:
        return settings.database_url
    return embedded.start(settings.home)


def normalise_url(url: str) -> str:
    """Accept libpq-style ``postgresql://`` URLs and point SQLAlchemy at psycopg 3."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigurationError(f"invalid database URL {url!r}: {exc}") from None
    if parsed.get_backend_name() not in ("postgresql", "postgres"):
        raise ConfigurationError(f"imgsearch needs PostgreSQL with pgvector, not {parsed.get_backend_name()!r}")
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def libpq_url(url: str) -> str:
    """``url`` as libpq writes it (for psql and non-Python backends): no driver name, socket paths unescaped."""
    parsed = make_url(normalise_url(url))
    auth = ""
    if parsed.username:
        auth = quote(parsed.username, safe="")
        if parsed.password:
            auth += ":" + quote(str(parsed.password), safe="")
        auth += "@"
    location = parsed.host or ""
    if parsed.port:
        location += f":{parsed.port}"
    query = "&".join(
        f"{key}={value}"
        for key, values in parsed.query.items()
        for value in ([values] if isinstance(values, str) else values)
    )
    return f"postgresql://{auth}{location}/{parsed.database or ''}" + (f"?{query}" if query else "")


def create_engine(url: str, **kwargs: object) -> Engine:
    """A SQLAlchemy engine for ``url`` (any PostgreSQL URL form)."""
    # No pool_pre_ping: it would add a round trip to every query; a connection the server dropped fails once
    # with DatabaseUnavailableError and the pool replaces it.
    return sa.create_engine(normalise_url(url), **kwargs)


def connect(settings: Settings | None = None) -> Engine:
    """Engine for the configured catalogue (``IMGSEARCH_DATABASE_URL`` or the embedded server).

    Raises :class:`DatabaseUnavailableError` if the server cannot be reached.
    """
    settings = settings or Settings.from_env()
    engine = create_engine(resolve_url(settings))
    check_connection(engine)
    return engine


def check_connection(engine: Engine) -> None:
    """Raise :class:`DatabaseUnavailableError` with the server's reason if ``engine`` cannot connect."""
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DatabaseUnavailableError(f"cannot connect to the database: {reason}") from None


@contextmanager
def transaction(bind: Engine | Connection) -> Iterator[Connection]:
    """A connection inside a transaction, whether given an engine or a connection."""
    if isinstance(bind, Engine):
        with bind.begin() as conn:
            yield conn
    elif bind.in_transaction():
        with bind.begin_nested():
            yield bind
    else:
        with bind.begin():
            yield bind


def _alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    cfg = Config(str(ALEMBIC_INI))
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema up to ``revision`` (default: the newest). Running it again is a no-op."""
    from alembic import command

    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), revision)


def downgrade(engine: Engine, revision: str = "-1") -> None:
    """Step the schema back to ``revision`` (default: one migration back; ``base`` removes it all)."""
    from alembic import command

    with engine.begin() as conn:
        command.downgrade(_alembic_config(conn), revision)


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at, or ``None`` if it has never been migrated."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    """The newest revision this version of imgsearch knows."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def require_schema(engine: Engine) -> None:
    """Raise :class:`SchemaError` unless the database is migrated to this version's newest revision."""
    try:
        current = current_revision(engine)
    except DBAPIError as exc:
        raise DatabaseUnavailableError(f"cannot read the schema version: {exc.orig}") from None
    if current is None:
        raise SchemaError("the database has no imgsearch schema yet: run `imgsearch db upgrade`")
    if current != head_revision():
        raise SchemaError(
            f"the database schema is at revision {current}, this imgsearch needs {head_revision()}: "
            "run `imgsearch db upgrade`"
        )


def translate_error(exc: DBAPIError, not_found: type[ImgsearchError] = UnknownSkuError) -> Exception:
    """Turn an error raised by imgsearch's SQL functions into the library's exception; keep anything else.

    ``not_found`` is the exception for the functions' "no such ..." errors (SQLSTATE P0002): an unknown SKU
    for the search functions, an unknown category for the category-index ones.
    """
    sqlstate = getattr(exc.orig, "sqlstate", None)
    diag = getattr(exc.orig, "diag", None)
    message = (getattr(diag, "message_primary", None) or str(exc.orig)).removeprefix("imgsearch: ")
    if sqlstate == "22023":
        return InvalidQueryError(message)
    if sqlstate == "P0002":
        return not_found(message)
    if sqlstate in ("42883", "42P01"):
        return SchemaError("the database has no imgsearch schema (or an old one): run `imgsearch db upgrade`")
    if exc.connection_invalidated or (sqlstate is not None and sqlstate.startswith("08")):
        return DatabaseUnavailableError(f"lost the database connection: {message}")
    return exc

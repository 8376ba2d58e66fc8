"""Connecting to the catalogue database: engines that work inside imgsearch's schema, transactions and their
retries, and the translation of database errors into the library's. URLs are in :mod:`imgsearch.urls`, the
embedded server in :mod:`imgsearch.embedded_server`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np
import psycopg
import sqlalchemy as sa
from pgvector import Vector
from pgvector.psycopg.vector import VectorBinaryDumper
from psycopg.rows import namedtuple_row
from psycopg.types import TypeInfo
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from imgsearch import embedded_server
from imgsearch.config import DEFAULT_SCHEMA, Settings, check_schema_name, env_float
from imgsearch.errors import (
    BusyError,
    DatabaseUnavailableError,
    EmbeddingSpaceMismatchError,
    ImgsearchError,
    InvalidQueryError,
    PermissionDeniedError,
    ReadOnlyDatabaseError,
    SchemaError,
    StaleVocabularyError,
    UnknownSkuError,
)
from imgsearch.urls import libpq_url, mask_password, normalise_url

#: The execution option under which an engine carries the schema it works in.
SCHEMA_OPTION = "imgsearch_schema"

# Every connection works inside imgsearch's schema: it goes first on the search_path, then the vector
# extension's schema (for the vector type), then whatever the server had configured (a shop's own schemas).
_SEARCH_PATH = (
    "SELECT set_config('search_path', concat_ws(', ', quote_ident(%s), ("
    "SELECT quote_ident(n.nspname) FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
    "WHERE e.extname = 'vector'), current_setting('search_path')), false), ("
    # ...and, in the same round trip, the vector type's OIDs (its own and its array's), for its binary form.
    "SELECT array[t.oid, t.typarray] FROM pg_type t JOIN pg_extension e ON e.extnamespace = t.typnamespace "
    "WHERE e.extname = 'vector' AND t.typname = 'vector')"
)
#: The vector type's OIDs when a connection was made before the extension existed.
_VECTOR_OIDS = "SELECT array[t.oid, t.typarray] FROM pg_type t WHERE t.oid = to_regtype('vector')"


def resolve_url(settings: Settings, access: str = "writer") -> str:
    """The configured database URL, or the embedded server's (started on demand).

    ``access`` picks the embedded server's role: ``admin`` (its superuser: schema changes, grants), ``owner``
    (the schema's owner: category indexes, tuning), ``writer`` (the catalogue: every other command) or ``reader``
    (search only). A configured URL is
    returned as it is: its user is whoever the operator made it. Readers go to ``IMGSEARCH_READ_URL`` (a read
    replica) when it is set.
    """
    if access == "reader" and settings.read_url:
        return settings.read_url
    if settings.database_url:
        return settings.database_url
    return embedded_server.url_for(embedded_server.start(settings.home), access)


def create_engine(url: str, schema: str = DEFAULT_SCHEMA, **kwargs: Any) -> Engine:
    """A SQLAlchemy engine for ``url`` (any PostgreSQL URL form) whose connections work inside ``schema``."""
    check_schema_name(schema)
    options = {**kwargs.pop("execution_options", {}), SCHEMA_OPTION: schema}
    # No pool_pre_ping: it would add a round trip to every query; a connection the server dropped fails once
    # with DatabaseUnavailableError and the pool replaces it.
    engine = sa.create_engine(normalise_url(url), execution_options=options, **kwargs)

    @event.listens_for(engine, "connect")
    def _enter_schema(dbapi_connection: Any, record: Any) -> None:
        # Once per physical connection. Committed, or the pool's rollback would undo it.
        with dbapi_connection.cursor() as cur:
            cur.execute(_SEARCH_PATH, (schema,))
            row = cur.fetchone()
        dbapi_connection.commit()
        if row is not None and row[1] is not None:  # no vector extension yet: binary_vector looks again later
            _register_vector(dbapi_connection, record, *row[1])

    return engine


def psycopg_connect(url: str, schema: str = DEFAULT_SCHEMA, **kwargs: Any) -> psycopg.Connection[Any]:
    """A plain psycopg connection (for COPY and benchmarks) that works inside ``schema`` like the engines do."""
    conn = psycopg.connect(libpq_url(url, show_password=True), **kwargs)
    conn.execute(_SEARCH_PATH, (check_schema_name(schema),))
    if not conn.autocommit:
        conn.commit()
    return conn


def binary_vector(conn: Connection, vector: np.ndarray) -> Vector:
    """``vector`` as a parameter that ``conn`` sends to the server in pgvector's binary form.

    SQLAlchemy's pgvector type sends vectors as text: formatting and parsing 512 numbers costs about half a
    millisecond a search. The binary dumper is registered on the driver connection for pgvector's own Vector
    class only (other NumPy parameters are untouched) when the engine connects (the type's OID comes with the
    search path, in the same round trip); a connection made before the extension existed registers it here.
    """
    record = conn.connection
    if _VECTOR_OID not in record.info:
        # Through SQLAlchemy, so that a lost connection surfaces like any other statement's.
        oids = conn.execute(sa.text(_VECTOR_OIDS)).scalar()
        if oids is None:
            raise SchemaError(_NO_VECTOR_EXTENSION)
        raw = record.driver_connection
        assert raw is not None
        _register_vector(raw, record, *oids)
    return Vector(vector)


def execute_direct(engine: Engine, statement: sa.TextClause, params: dict[str, Any]) -> list[Any]:
    """Run one read-only statement on a pooled connection through psycopg itself, in autocommit; rows as named
    tuples. ``Vector`` parameters go in binary.

    The hot path of a search: SQLAlchemy's execution machinery costs about as much per statement as a warm
    search does in the database (benchmarks/results/filtered-search-*.md), while this keeps the engine's pool, its
    schema and one round trip. Errors are raised as SQLAlchemy's ``DBAPIError`` (so :func:`translate_error`
    applies), and a connection that broke is dropped from the pool.
    """
    sql_text = _direct_sql.get(statement)
    if sql_text is None:
        sql_text = str(statement.compile(dialect=engine.dialect))
        # Vectors (alone or in a list) in binary: the only form their dumper has.
        for name, value in params.items():
            if isinstance(value, Vector) or (isinstance(value, list) and value and isinstance(value[0], Vector)):
                sql_text = sql_text.replace(f"%({name})s", f"%({name})b")
        _direct_sql[statement] = sql_text
    raw = engine.raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    try:
        if _VECTOR_OID not in raw.info:
            row = driver.execute(_VECTOR_OIDS).fetchone()
            driver.rollback()
            if row is None:
                raise SchemaError(_NO_VECTOR_EXTENSION)
            _register_vector(driver, raw, *row[0])
        driver.autocommit = True
        try:
            with driver.cursor(row_factory=namedtuple_row) as cur:
                return cur.execute(sql_text, params).fetchall()
        finally:
            if not driver.broken:
                driver.autocommit = False  # as the pool hands connections out to SQLAlchemy
    except psycopg.Error as exc:
        if driver.broken or driver.closed:
            raw.invalidate()
        raise DBAPIError.instance(sql_text, params, exc, psycopg.Error) from None
    finally:
        raw.close()


#: psycopg's text of each statement run by :func:`execute_direct` (compiled once).
_direct_sql: dict[sa.TextClause, str] = {}


def _register_vector(driver: psycopg.Connection[Any], record: Any, oid: int, array_oid: int) -> None:
    """Send pgvector's Vector in binary on this connection, alone or in lists (vector[]); once, when the
    connection is made."""
    TypeInfo("vector", oid, array_oid).register(driver)
    driver.adapters.register_dumper(Vector, type("VectorOidBinaryDumper", (VectorBinaryDumper,), {"oid": oid}))
    record.info[_VECTOR_OID] = oid


_NO_VECTOR_EXTENSION = "the vector extension is not installed in this database: run imgsearch db upgrade"

#: Key of the vector type's OID in a pooled connection's info (set once :func:`binary_vector` registered it).
_VECTOR_OID = "imgsearch_vector_oid"


def schema_of(bind: Engine | Connection) -> str:
    """The schema an engine (or a connection of one) made by :func:`create_engine` works in."""
    return bind.get_execution_options().get(SCHEMA_OPTION, DEFAULT_SCHEMA)


def connect(settings: Settings | None = None, access: str = "writer") -> Engine:
    """Engine for the configured catalogue (``IMGSEARCH_DATABASE_URL`` or the embedded server).

    On the embedded server, ``access`` picks the role (see :func:`resolve_url`): by default one that can search
    and change products but not the schema, and cannot run shell commands as a superuser could.

    Raises :class:`DatabaseUnavailableError` if the server cannot be reached.
    """
    settings = settings or Settings.from_env()
    engine = create_engine(resolve_url(settings, access), schema=settings.schema)
    check_connection(engine)
    return engine


def check_connection(engine: Engine) -> None:
    """Raise :class:`DatabaseUnavailableError` with the server's reason if ``engine`` cannot connect."""
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DatabaseUnavailableError(f"cannot connect to the database: {mask_password(reason)}") from None


@contextmanager
def transaction(bind: Engine | Connection) -> Iterator[Connection]:
    """A connection inside a transaction, whether given an engine or a connection.

    Database errors that mean something to a user (server gone, privilege missing, no schema...) leave as the
    library's exceptions (:func:`translate_error`); others as they are.
    """
    try:
        if isinstance(bind, Engine):
            with bind.begin() as conn:
                yield conn
        elif bind.in_transaction():
            with bind.begin_nested():
                yield bind
        else:
            with bind.begin():
                yield bind
    except DBAPIError as exc:
        translated = translate_error(exc)
        # The SQL functions' own errors (bad argument, not found) are for the caller to name.
        if translated is exc or getattr(exc.orig, "sqlstate", None) in _FUNCTION_SQLSTATES:
            raise
        raise translated from None


@contextmanager
def autocommit_session(engine: Engine, what: str) -> Iterator[psycopg.Connection[Any]]:
    """A pooled connection's psycopg session in autocommit, for what cannot run inside a transaction block
    (``CREATE INDEX CONCURRENTLY``); its database errors leave as the library's exceptions, ``what`` naming the
    work in them. The connection is closed afterwards, not returned to the pool, so that the session's settings
    (``lock_timeout``, ``maintenance_work_mem``) never reach a search."""
    raw = engine.raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    try:
        driver.autocommit = True
        yield driver
    except psycopg.Error as exc:
        raise translate_error(DBAPIError.instance(what, None, exc, psycopg.Error)) from None
    finally:
        raw.invalidate()


T = TypeVar("T")

#: SQLSTATEs after which the same transaction, run again, normally succeeds: deadlock, serialization failure.
RETRYABLE_SQLSTATES = ("40P01", "40001")
#: Waits between attempts (seconds): a transaction is tried at most once more than there are waits here.
RETRY_WAITS = (0.05, 0.2, 0.5, 1.0, 2.0)
#: How long writes wait for an unreachable server (a restart, a failover) before giving up, in seconds, unless
#: ``IMGSEARCH_RECONNECT_SECONDS`` says otherwise.
DEFAULT_RECONNECT_SECONDS = 30.0


def reconnect_waits(total: float | None = None) -> list[float]:
    """The pauses between reconnection attempts: doubling from half a second, ``total`` seconds in all."""
    if total is None:
        total = env_float("IMGSEARCH_RECONNECT_SECONDS", DEFAULT_RECONNECT_SECONDS)
    waits: list[float] = []
    step = 0.5
    while sum(waits) < total:
        waits.append(min(step, total - sum(waits)))
        step *= 2
    return waits


def _is_disconnect(exc: DBAPIError) -> bool:
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if exc.connection_invalidated:
        return True
    if sqlstate is None:
        return isinstance(exc, OperationalError)
    # 08: connection exceptions; 57P01-57P03: the server is shutting down or starting up.
    return sqlstate.startswith("08") or sqlstate in ("57P01", "57P02", "57P03")


def retrying(attempt: Callable[[], T], waits: Sequence[float], transient: Callable[[Exception], bool]) -> T:
    """The one retry policy: call ``attempt``; when it fails with an error ``transient`` accepts, wait the next of
    ``waits`` (seconds) and call it again; once the waits are used up, or for any other error, the error stands."""
    for wait in (*waits, None):
        try:
            return attempt()
        except Exception as exc:
            if wait is None or not transient(exc):
                raise
            time.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


def is_conflict(exc: Exception) -> bool:
    """A deadlock or serialization failure: the same transaction, run again, normally succeeds."""
    return isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) in RETRYABLE_SQLSTATES


def is_outage(exc: Exception) -> bool:
    """The server cannot be reached (gone, restarting, refusing)."""
    return isinstance(exc, DatabaseUnavailableError)


def run_transaction(bind: Engine | Connection, work: Callable[[Connection], T], *, reconnect: bool = False) -> T:
    """Run ``work`` in a transaction; on a deadlock or serialization failure run it again (bounded, with backoff).

    With ``reconnect``, a lost or refused connection is also retried for about half a minute (a server restart)
    before :class:`DatabaseUnavailableError`; only for work that is safe to repeat (idempotent), since a commit
    that was in flight when the connection died may or may not have happened. Given a connection that is already
    in a transaction, ``work`` runs once: a failed transaction cannot be retried from inside.
    """

    def once() -> T:
        with transaction(bind) as conn:
            return work(conn)

    own = isinstance(bind, Engine) or not bind.in_transaction()
    conflicts = RETRY_WAITS if own else ()
    outages = reconnect_waits() if reconnect and isinstance(bind, Engine) else []
    return retrying(lambda: retrying(once, conflicts, is_conflict), outages, is_outage)


def primary_message(exc: DBAPIError) -> str:
    """The server's one-line message of a database error (without DETAIL, HINT or the statement)."""
    diag = getattr(exc.orig, "diag", None)
    return getattr(diag, "message_primary", None) or " ".join(str(exc.orig).split())


# SQLSTATEs the SQL functions raise on purpose: invalid argument, no such SKU/category.
_FUNCTION_SQLSTATES = ("22023", "P0002")


def translate_error(exc: DBAPIError, not_found: type[ImgsearchError] = UnknownSkuError) -> Exception:
    """Turn an error raised by imgsearch's SQL functions into the library's exception; keep anything else.

    ``not_found`` is the exception for the functions' "no such ..." errors (SQLSTATE P0002): an unknown SKU
    for the search functions, an unknown category for the category-index ones.
    """
    sqlstate = getattr(exc.orig, "sqlstate", None)
    message = primary_message(exc).removeprefix("imgsearch: ")
    if sqlstate == _FUNCTION_SQLSTATES[0]:
        return InvalidQueryError(message)
    if sqlstate == _FUNCTION_SQLSTATES[1]:
        return not_found(message)
    if sqlstate in ("42883", "42P01", "3F000", "42704"):  # no such function, table, schema, type
        return SchemaError(
            "the database has no imgsearch schema (or an old one), or this role may not use it: run "
            "`imgsearch db upgrade`, or grant the role access (`imgsearch db grant-reader ROLE`)"
        )
    if sqlstate == "25006":
        return ReadOnlyDatabaseError(
            "this database is a read-only replica: write to the primary (IMGSEARCH_DATABASE_URL), search here "
            "(IMGSEARCH_READ_URL)"
        )
    if sqlstate == "42501":
        return PermissionDeniedError(f"the database role may not do this: {message}")
    if sqlstate == "IS001":
        return EmbeddingSpaceMismatchError(message)
    if sqlstate == "55000" and "visual vocabulary" in message and "no longer the active one" in message:
        return StaleVocabularyError(message)
    if sqlstate == "55000" and primary_message(exc).startswith("imgsearch: "):
        # A migration's own refusal ("... products have several photos ..."): the schema cannot go there.
        return SchemaError(message)
    if sqlstate == "55P03":
        return BusyError(
            "the catalogue is locked by another session (a long ingest, query or schema change); try again when "
            f"it has finished ({message})"
        )
    if _is_disconnect(exc):
        # No SQLSTATE: libpq's own failure (server down, refused, socket gone), before or during a query.
        reason = mask_password(" ".join(str(exc.orig if exc.orig else exc).split()))
        return DatabaseUnavailableError(f"lost the connection to the database or cannot reach it: {reason}")
    return exc

"""Least-privilege database roles: a reader for the website backend, a writer for the catalogue team's scripts.

A reader can reach imgsearch's schema, read the catalogue and run the search functions; every write and every
schema change is refused by PostgreSQL itself. A writer can also add, change and remove products. Neither can
change the schema or its migration history: that stays with the role that runs ``imgsearch db upgrade``, which
should also be the one that grants, so that the default privileges cover tables of later revisions.

The statements are the templates in ``imgsearch/sql/commands/``; the role and schema names are inserted as quoted
identifiers (psycopg's :class:`psycopg.sql.Identifier`), never pasted as text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import sql as pgsql
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from imgsearch import embedded_server, sql
from imgsearch.db import schema_of, translate_error
from imgsearch.errors import ConfigurationError, PermissionDeniedError, SchemaError

# Names PostgreSQL reserves or gives a meaning of their own in GRANT.
_RESERVED = {"public", "current_user", "session_user", "current_role", "none", "all"}


@dataclass(frozen=True)
class GrantResult:
    """What a grant did: the role, whether it had to be created (without login), the schema."""

    role: str
    created: bool
    schema: str


def check_role_name(role: str) -> str:
    """Return ``role`` if it can be granted to, else raise :class:`ConfigurationError`."""
    if not role or len(role.encode()) > 63 or role.lower() in _RESERVED or role.startswith("pg_") or "\0" in role:
        raise ConfigurationError(f"not a usable role name: {role!r}")
    return role


_READER_GRANTS = ["grant_reader"]
_WRITER_GRANTS = ["grant_reader", "grant_writer", "grant_writer_maintain"]


def _apply(raw: Any, role: str, schema: str, templates: list[str], server_version: int) -> None:
    for name in templates:
        if name.endswith("_maintain") and server_version < 170000:
            continue  # MAINTAIN is new in PostgreSQL 17
        raw.execute(pgsql.SQL(sql.command(name)).format(schema=pgsql.Identifier(schema), role=pgsql.Identifier(role)))


def _run(engine: Engine, role: str, templates: list[str], create: bool) -> GrantResult:
    check_role_name(role)
    schema = schema_of(engine)
    try:
        with engine.begin() as conn:
            if conn.execute(sa.text("SELECT to_regnamespace(:s) IS NULL"), {"s": schema}).scalar_one():
                raise SchemaError(f"the database has no schema {schema!r}: run `imgsearch db upgrade` first")
            exists = conn.execute(sa.text("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :r)"), {"r": role})
            created = False
            raw = conn.connection.driver_connection
            assert raw is not None
            if not exists.scalar_one():
                if not create:
                    raise ConfigurationError(f"there is no role {role!r}")
                try:
                    raw.execute(pgsql.SQL("CREATE ROLE {} NOLOGIN").format(pgsql.Identifier(role)))
                except psycopg.errors.InsufficientPrivilege:
                    raise PermissionDeniedError(
                        f"there is no role {role!r} and this role may not create one (it lacks CREATEROLE): "
                        f"create it as an administrator (CREATE ROLE {role} LOGIN), then grant again"
                    ) from None
                created = True
            version = conn.execute(sa.text("SELECT current_setting('server_version_num')::integer")).scalar_one()
            _apply(raw, role, schema, templates, version)
    except DBAPIError as exc:
        raise translate_error(exc) from None
    except psycopg.Error as exc:  # raised by the driver connection itself (the GRANT statements)
        raise translate_error(DBAPIError(None, None, exc)) from None
    return GrantResult(role=role, created=created, schema=schema)


def grant_reader(engine: Engine, role: str) -> GrantResult:
    """Let ``role`` search the catalogue and nothing else; the role is created (without login) if missing.

    Raises:
        ConfigurationError: not a usable role name.
        SchemaError: imgsearch's schema does not exist yet.
        PermissionDeniedError: the connected role may not create roles or grant on the schema.
    """
    return _run(engine, role, _READER_GRANTS, create=True)


def grant_writer(engine: Engine, role: str) -> GrantResult:
    """Let ``role`` search and change the catalogue's products (not its schema); created if missing."""
    return _run(engine, role, _WRITER_GRANTS, create=True)


def revoke_writer(engine: Engine, role: str) -> GrantResult:
    """Take back a writer's write privileges; ``role`` can still search."""
    return _run(engine, role, ["revoke_writer", "revoke_writer_maintain"], create=False)


def revoke_reader(engine: Engine, role: str) -> GrantResult:
    """Take back everything imgsearch granted ``role`` (the role itself is left for the operator to drop)."""
    return _run(engine, role, ["revoke_reader"], create=False)


def grant_embedded_roles(conn: Connection, schema: str) -> None:
    """Hand ``schema`` to the embedded server's owner role (:data:`imgsearch.embedded_server.OWNER_ROLE`) and give
    its writer and reader roles their privileges there, inside ``conn``'s transaction. Called after every
    migration; on any other server those roles do not exist (they carry imgsearch's comment) and nothing happens.

    The grants are made as the owner, so that its default privileges cover the tables it creates later (a tuned
    space's) as well as the migrations' own."""
    found = set(
        conn.execute(
            sa.text(
                "SELECT rolname FROM pg_roles WHERE rolname = ANY(:r) AND shobj_description(oid, 'pg_authid') = :c"
            ),
            {"r": list(embedded_server.ACCESS_ROLES.values()), "c": embedded_server.ROLE_COMMENT},
        ).scalars()
    )
    if not found:
        return
    raw = conn.connection.driver_connection
    assert raw is not None
    version = conn.execute(sa.text("SELECT current_setting('server_version_num')::integer")).scalar_one()
    # public is shared with whatever else the database holds (and, before revision 0003, held imgsearch's
    # tables): never handed over; a catalogue there keeps maintenance with the superuser.
    # Only a superuser can give objects away (the embedded server's `db upgrade`); a plain role migrating on a
    # server that happens to have these roles keeps what it made.
    superuser = conn.execute(sa.text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")).scalar_one()
    owner = embedded_server.OWNER_ROLE if schema != "public" and superuser else None
    if owner in found:
        raw.execute(pgsql.SQL(sql.command("hand_over_schema")).format(schema=schema, role=owner))
        raw.execute(pgsql.SQL("SET LOCAL ROLE {}").format(pgsql.Identifier(owner)))
    for role, templates in (
        (embedded_server.WRITER_ROLE, _WRITER_GRANTS),
        (embedded_server.READER_ROLE, _READER_GRANTS),
    ):
        if role in found:
            _apply(raw, role, schema, templates, version)
    if owner in found:
        raw.execute("RESET ROLE")

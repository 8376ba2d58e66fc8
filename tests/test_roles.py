"""Least privilege: the reader role searches and can change nothing; the writer changes products, not the schema."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import numpy as np
import psycopg
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import Engine, make_url

from imgsearch import catalogue, db, indexes, query, roles, schema
from imgsearch.catalogue import ProductRecord
from imgsearch.cli import main
from imgsearch.errors import ConfigurationError, PermissionDeniedError, SchemaError


class _Space:
    model_name, weights_id, preprocessing_version, dimension = "m", "w" * 64, "p", 512


def _vector(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=512).astype(np.float32)


@pytest.fixture
def filled(engine: Engine) -> Engine:
    catalogue.ensure_space(engine, _Space())
    catalogue.upsert_products(
        engine,
        [ProductRecord(sku=f"s{i}", category="c", embedding=_vector(i), price=i + 1) for i in range(20)],
    )
    return engine


def _login(admin: Engine, role: str) -> Iterator[Engine]:
    """An engine connected as ``role`` (the test server trusts local connections, so a login suffices)."""
    with admin.begin() as conn:
        conn.execute(sa.text(f'ALTER ROLE "{role}" LOGIN'))
    url = make_url(admin.url.render_as_string(hide_password=False)).set(username=role)
    engine = db.create_engine(url.render_as_string(hide_password=False))
    yield engine
    engine.dispose()


@pytest.fixture
def reader(filled: Engine) -> Iterator[tuple[str, Engine]]:
    role = f"web_{uuid.uuid4().hex[:8]}"
    result = roles.grant_reader(filled, role)
    assert result.created and result.schema == "imgsearch"
    for engine in _login(filled, role):
        yield role, engine


@pytest.fixture
def writer(filled: Engine) -> Iterator[tuple[str, Engine]]:
    role = f"team_{uuid.uuid4().hex[:8]}"
    roles.grant_writer(filled, role)
    for engine in _login(filled, role):
        yield role, engine


# Statements a reader must never get through, raw as a backend would send them.
WRITES = [
    "INSERT INTO imgsearch.products (sku, category) VALUES ('x', 'c')",
    "INSERT INTO imgsearch.product_images (product_id, category, embedding) "
    "SELECT product_id, category, embedding FROM imgsearch.product_images LIMIT 1",
    "DELETE FROM imgsearch.product_images",
    "UPDATE imgsearch.products SET price = 0",
    "DELETE FROM imgsearch.products",
    "TRUNCATE imgsearch.products",
    "CREATE TABLE imgsearch.t (i int)",
    "DROP INDEX imgsearch.ix_products_price",
    "ALTER TABLE imgsearch.products ADD COLUMN x int",
    "UPDATE imgsearch.alembic_version SET version_num = '0001'",
    "CREATE INDEX ON imgsearch.products (name)",
    "COPY imgsearch.products (sku) TO PROGRAM 'true'",
]


def test_reader_searches_and_nothing_else(reader: tuple[str, Engine], filled: Engine) -> None:
    _role, engine = reader
    schema.require_schema(engine)
    assert len(query.search(engine, _vector(3), 5)) == 5
    assert query.similar_to_sku(engine, "s3", 5)[0].sku != "s3"
    assert all(r.price < 10 for r in query.cheaper_alternatives(engine, "s9", 5))
    assert catalogue.stats(engine).products == 20

    with pytest.raises(PermissionDeniedError, match="permission denied for table products"):
        catalogue.set_stock(engine, {"s1": False})
    with pytest.raises(PermissionDeniedError):
        catalogue.remove(engine, ["s1"])
    with pytest.raises(PermissionDeniedError):
        catalogue.upsert_products(engine, [ProductRecord(sku="n", category="c", embedding=_vector(99))])
    with pytest.raises(PermissionDeniedError):
        catalogue.clear(engine)
    with pytest.raises(PermissionDeniedError, match="owner"):
        indexes.create_category_index(engine, "c")

    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        for statement in WRITES:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                raw.execute(statement)
            raw.rollback()
    assert catalogue.stats(filled).products == 20  # the admin sees nothing changed

    # The CLI says it in one line.
    url = engine.url.render_as_string(hide_password=False)
    result = CliRunner().invoke(main, ["--database-url", url, "stock", "--out", "s1"])
    assert result.exit_code == 1
    assert result.stderr == "Error: the database role may not do this: permission denied for table products\n"


def test_writer_changes_products_but_not_the_schema(writer: tuple[str, Engine], filled: Engine) -> None:
    _role, engine = writer
    counts = catalogue.upsert_products(engine, [ProductRecord(sku="new", category="c", embedding=_vector(50))])
    assert counts.added == 1
    assert catalogue.set_stock(engine, {"s1": False}) == 1
    assert catalogue.remove(engine, ["s2"]) == 1
    with engine.begin() as conn:
        conn.execute(sa.text("ANALYZE products"))  # ingestion refreshes the statistics after a load
    assert [r.sku for r in query.search(engine, _vector(50), 1)] == ["new"]
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        for statement in WRITES[6:]:  # DDL, the migration history, shell commands
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                raw.execute(statement)
            raw.rollback()
    with pytest.raises(PermissionDeniedError, match="must be owner"):  # category indexes are the owner's
        indexes.maintain_category_indexes(engine, min_products=1, max_share=1)
    catalogue.clear(engine)  # `imgsearch db reset` is the catalogue team's
    assert catalogue.is_empty(filled)


def test_revoking(writer: tuple[str, Engine], filled: Engine) -> None:
    role, engine = writer
    roles.revoke_writer(filled, role)
    assert len(query.search(engine, _vector(1), 3)) == 3
    with pytest.raises(PermissionDeniedError):
        catalogue.set_stock(engine, {"s1": False})
    roles.revoke_reader(filled, role)
    with pytest.raises(PermissionDeniedError, match="schema imgsearch"):
        schema.require_schema(engine)
    with pytest.raises(SchemaError, match="grant the role access"):
        query.search(engine, _vector(1), 3)


def test_grant_commands(filled: Engine) -> None:
    url = filled.url.render_as_string(hide_password=False)
    role = f"Web Shop {uuid.uuid4().hex[:6]}"  # any name: it is quoted as an identifier, never pasted
    result = CliRunner().invoke(main, ["--database-url", url, "db", "grant-reader", role])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"created role {role} without login")
    again = CliRunner().invoke(main, ["--database-url", url, "db", "grant-reader", role])
    assert again.stdout == f"{role} can search (read-only) in schema imgsearch\n"
    for command in ("grant-writer", "revoke-writer", "revoke-reader"):
        assert CliRunner().invoke(main, ["--database-url", url, "db", command, role]).exit_code == 0
    bad = CliRunner().invoke(main, ["--database-url", url, "db", "grant-reader", "pg_monitor"])
    assert bad.exit_code == 1 and bad.stderr == "Error: not a usable role name: 'pg_monitor'\n"
    missing = CliRunner().invoke(main, ["--database-url", url, "db", "revoke-reader", "no_such_role_xyz"])
    assert missing.exit_code == 1 and missing.stderr == "Error: there is no role 'no_such_role_xyz'\n"
    with pytest.raises(ConfigurationError):
        roles.grant_reader(filled, "")


def test_a_database_owned_by_a_plain_role_is_migrated_both_ways_and_grants_say_what_is_missing(
    make_database: Callable[..., str],
) -> None:
    # A shop's own server: an administrator made the database, gave it to a role without superuser or
    # CREATEROLE and installed pgvector; that role runs the schema's life from then on.
    url = make_database()
    name, owner = make_url(url).database, f"shop_{uuid.uuid4().hex[:8]}"
    admin = make_url(url)
    with psycopg.connect(host=admin.query["host"], user="postgres", dbname="postgres", autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{owner}" LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB')
        conn.execute(f'ALTER DATABASE "{name}" OWNER TO "{owner}"')
    with psycopg.connect(host=admin.query["host"], user="postgres", dbname=name, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION vector")
    as_owner = admin.set(username=owner).render_as_string(hide_password=False)

    def run(*args: str, code: int = 0) -> str:
        result = CliRunner().invoke(main, ["--database-url", as_owner, *args])
        assert result.exit_code == code, result.output
        assert "Traceback" not in result.output
        return result.output

    run("db", "upgrade")
    # The older functions come back with their SET hnsw.iterative_scan clause, which needs pgvector's library.
    assert "at revision 0010" in run("db", "downgrade", "0010", "--yes")
    assert f"at revision {schema.head_revision()}" in run("db", "upgrade")
    refused = run("db", "grant-reader", "web_backend", code=1).strip()
    assert refused.startswith("Error: ") and len(refused.splitlines()) == 1 and "CREATEROLE" in refused
    with psycopg.connect(host=admin.query["host"], user="postgres", dbname=name, autocommit=True) as conn:
        conn.execute('CREATE ROLE "web_backend" LOGIN')
    try:
        assert "web_backend" in run("db", "grant-reader", "web_backend")
    finally:
        with psycopg.connect(host=admin.query["host"], user="postgres", dbname="postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            conn.execute('DROP ROLE "web_backend"')
            conn.execute(f'DROP ROLE "{owner}"')

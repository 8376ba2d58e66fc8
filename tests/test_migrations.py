"""Migrations as operators meet them: a shop's existing database, a catalogue made before imgsearch had its own
schema, a database migrated by a newer imgsearch, concurrent upgrades, and functions that match the packaged SQL."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import Engine

from imgsearch import catalogue, db, query, schema, sql
from imgsearch.catalogue import ProductRecord
from imgsearch.cli import main
from imgsearch.errors import BusyError, SchemaError, SchemaTooNewError


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 512))
    return (centres[np.arange(n) % 3] + rng.normal(scale=0.6, size=(n, 512))).astype(np.float32)


def _vector_text(v: np.ndarray) -> str:
    return "[" + ",".join(repr(float(x)) for x in v) + "]"


def _fingerprint(engine: Engine, table: str) -> list[tuple]:
    """Every stored value of every product, vectors included, in id order: from the one-photo products table of
    revisions before 0005 (``table``), or from products and their photos at the head revision."""
    with engine.connect() as conn:
        if conn.execute(sa.text("SELECT to_regclass('imgsearch.product_images')")).scalar_one() is None:
            statement = (
                f"SELECT id, sku, name, category, price, in_stock, image, image_sha256, embedding::text, "
                f"created_at, updated_at FROM {table} ORDER BY id"
            )
        else:
            statement = (
                "SELECT p.id, p.sku, p.name, p.category, p.price, p.in_stock, nullif(i.image, ''), i.image_sha256, "
                "i.embedding::text, p.created_at, p.updated_at FROM imgsearch.products p "
                "JOIN imgsearch.product_images i ON i.product_id = p.id ORDER BY p.id, i.position"
            )
        return [tuple(r) for r in conn.execute(sa.text(statement))]


def _functions(engine: Engine, schema_name: str) -> dict[str, tuple]:
    """Definition of every imgsearch_* function in a schema, search_path setting aside."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT p.proname, pg_get_function_arguments(p.oid), pg_get_function_result(p.oid), p.prosrc, "
                "p.provolatile, l.lanname, array(SELECT c FROM unnest(p.proconfig) c "
                "WHERE c NOT LIKE 'search_path=%' ORDER BY c) "
                "FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang "
                "WHERE p.pronamespace = to_regnamespace(:s) AND p.proname LIKE 'imgsearch\\_%'"
            ),
            {"s": schema_name},
        ).all()
    return {r[0]: tuple(r[1:]) for r in rows}


def test_head_functions_equal_the_packaged_sql(engine: Engine) -> None:
    # The packaged files applied by hand into a scratch schema must give exactly what the migrations installed.
    packaged = sql.current_functions()
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE SCHEMA packaged_check"))
        conn.execute(sa.text("SELECT set_config('search_path', 'packaged_check, imgsearch, public', true)"))
        for text in packaged.values():
            sql.execute(conn, text)
    installed = _functions(engine, "imgsearch")
    assert set(installed) == set(packaged)  # no leftover function of an older revision
    assert installed == _functions(engine, "packaged_check")
    with engine.connect() as conn:
        configs = conn.execute(
            sa.text(
                "SELECT proname, proconfig FROM pg_proc "
                "WHERE pronamespace = 'imgsearch'::regnamespace AND proname LIKE 'imgsearch\\_%'"
            )
        ).all()
    # Every function is pinned to imgsearch's schema, whatever the caller's search_path.
    assert all(any(c.startswith("search_path=imgsearch") for c in config) for _, config in configs), configs


def test_released_sql_folders_are_frozen() -> None:
    # A released revision's SQL is never edited (docs/operations.md, "Changing the schema"): every pinned copy is
    # there, unchanged.
    assert sql.revisions()[0] == "0003"
    assert {"imgsearch_similar", "imgsearch_cheaper", "adopt_public_catalogue"} <= set(sql.objects("0003"))
    assert sql.version_before("0003", "imgsearch_similar") is None
    root = Path(sql.__file__).parent
    pinned = sql.released()
    assert {r for path in pinned for r in [path.split("/")[0]]} == set(sql.revisions())
    changed = [p for p, digest in pinned.items() if hashlib.sha256((root / p).read_bytes()).hexdigest() != digest]
    assert changed == [], f"released SQL copies were edited: {changed} (change functions/ and add a revision)"


def test_every_function_has_one_source_file() -> None:
    # functions/<name>.sql is each function's text at head (test_head_functions_equal_the_packaged_sql checks it
    # against a migrated database); the revisions' folders hold frozen release copies of the same functions.
    functions = sql.current_functions()
    released = {n for r in sql.revisions() for n in sql.objects(r) if n.startswith("imgsearch_")}
    assert released <= set(functions) and "upgrade_photo_features" not in functions
    assert sql.current("imgsearch_similar") == functions["imgsearch_similar"]


def test_a_shops_own_database_keeps_its_tables_and_migrations(make_database: Callable[..., str]) -> None:
    url = make_database()
    shop = db.create_engine(url)
    with shop.begin() as conn:
        # The shop's own Alembic history and its own "products" table, in public.
        conn.execute(sa.text("CREATE TABLE public.alembic_version (version_num varchar(32) PRIMARY KEY)"))
        conn.execute(sa.text("INSERT INTO public.alembic_version VALUES ('shop_4f2a')"))
        conn.execute(sa.text("CREATE TABLE public.products (id serial PRIMARY KEY, title text NOT NULL)"))
        conn.execute(sa.text("INSERT INTO public.products (title) VALUES ('a shop row')"))

    schema.upgrade(shop)
    assert schema.current_revision(shop) == schema.head_revision()
    catalogue.upsert_products(shop, [ProductRecord(sku="s1", category="c", embedding=_vectors(1)[0])])
    assert [r.sku for r in query.search(shop, _vectors(1)[0], 1)] == ["s1"]
    with shop.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM public.alembic_version")).scalar_one() == "shop_4f2a"
        assert conn.execute(sa.text("SELECT title FROM public.products")).scalar_one() == "a shop row"

    # And it can be removed again, leaving the shop's tables as they were.
    schema.downgrade(shop, "base")
    with shop.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regnamespace('imgsearch')")).scalar_one() is None
        assert conn.execute(sa.text("SELECT version_num FROM public.alembic_version")).scalar_one() == "shop_4f2a"
        assert conn.execute(sa.text("SELECT count(*) FROM public.products")).scalar_one() == 1
    shop.dispose()


def test_a_catalogue_in_public_moves_to_the_schema_with_nothing_lost(make_database: Callable[..., str]) -> None:
    url = make_database()
    # The layout of imgsearch before revision 0003: everything in public, version in public.alembic_version.
    legacy = db.create_engine(url, schema="public")
    schema.upgrade(legacy, "0002")
    vectors = _vectors(600)
    with legacy.begin() as conn:
        for i, v in enumerate(vectors):
            conn.execute(
                sa.text(
                    "INSERT INTO products (sku, name, category, price, in_stock, image, image_sha256, embedding) "
                    "VALUES (:sku, :name, :cat, :price, :stock, :image, :sha, CAST(:v AS vector))"
                ),
                {
                    "sku": f"p{i}",
                    "name": f"Product {i}",
                    "cat": f"c{i % 3}",
                    "price": Decimal(i % 50) + Decimal("0.99"),
                    "stock": i % 5 != 0,
                    "image": f"img/{i}.jpg",
                    "sha": f"{i:064x}",
                    "v": _vector_text(v),
                },
            )
        conn.execute(sa.text("INSERT INTO embedding_space VALUES (true, 'm', 'w', 'p', 512, now())"))
        conn.execute(sa.text("SELECT imgsearch_create_category_index('c1')"))
    before = _fingerprint(legacy, "public.products")
    legacy.dispose()

    engine = db.create_engine(url)
    schema.upgrade(engine)
    assert schema.current_revision(engine) == schema.head_revision()
    assert _fingerprint(engine, "imgsearch.products") == before
    with engine.connect() as conn:
        left_in_public = conn.execute(
            sa.text(
                "SELECT to_regclass('public.products'), to_regclass('public.embedding_space'), "
                "to_regclass('public.alembic_version'), "
                "(SELECT count(*) FROM pg_proc WHERE pronamespace = 'public'::regnamespace "
                "AND proname LIKE 'imgsearch\\_%')"
            )
        ).one()
        assert tuple(left_in_public) == (None, None, None, 0)
    assert catalogue.stored_space(engine) is not None
    # The category index came along and still serves its category.
    from imgsearch import indexes

    assert [i.category for i in indexes.list_category_indexes(engine)] == ["c1"]
    q = vectors[7] + 0.01
    assert [r.sku for r in query.search(engine, q, 10, categories=["c1"])] == [
        r.sku for r in query.search(engine, q, 10, categories=["c1"], exact=True)
    ]
    # Down to 0002 and up again: still every row.
    schema.downgrade(engine, "0002")
    schema.upgrade(engine)
    assert _fingerprint(engine, "imgsearch.products") == before
    engine.dispose()


def test_a_database_migrated_by_a_newer_imgsearch_gets_one_clear_line(engine: Engine, database_url: str) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE imgsearch.alembic_version SET version_num = '0999'"))
    message = "this catalogue was migrated by a newer imgsearch (revision 0999); upgrade the package"
    with pytest.raises(SchemaTooNewError, match=message.replace("(", r"\(").replace(")", r"\)")):
        schema.require_schema(engine)
    with pytest.raises(SchemaTooNewError):
        schema.upgrade(engine)
    for args in (["db", "upgrade"], ["stats"], ["similar", "x"]):
        result = CliRunner().invoke(main, ["--database-url", database_url, *args])
        assert result.exit_code == 1 and result.stderr == f"Error: {message}\n", result.output
    with engine.connect() as conn:  # nothing was touched
        assert conn.execute(sa.text("SELECT version_num FROM imgsearch.alembic_version")).scalar_one() == "0999"


def test_an_unknown_target_revision_is_one_line(engine: Engine, database_url: str) -> None:
    with pytest.raises(SchemaError, match="cannot upgrade to 'zzzz'"):
        schema.upgrade(engine, "zzzz")
    result = CliRunner().invoke(main, ["--database-url", database_url, "db", "upgrade", "zzzz"])
    assert result.exit_code == 1 and result.stderr.startswith("Error: cannot upgrade to 'zzzz'")
    assert len(result.stderr.splitlines()) == 1


def test_concurrent_first_upgrades_both_succeed(make_database: Callable[..., str]) -> None:
    # Two deploy scripts (or replicas of a service) upgrading a fresh database at the same moment.
    url = make_database()
    command = [sys.executable, "-m", "imgsearch", "--database-url", url, "db", "upgrade"]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for run in runs:
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
        assert f"at revision {schema.head_revision()}" in out
    engine = db.create_engine(url)
    assert schema.current_revision(engine) == schema.head_revision()
    engine.dispose()


def test_a_schema_of_another_name(make_database: Callable[..., str]) -> None:
    url = make_database()
    result = CliRunner().invoke(main, ["--database-url", url, "--schema", "visual_search", "db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert "schema visual_search at revision" in result.stdout
    engine = db.create_engine(url, schema="visual_search")
    catalogue.upsert_products(engine, [ProductRecord(sku="a", category="c", embedding=_vectors(1)[0])])
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regnamespace('imgsearch')")).scalar_one() is None
        found = conn.execute(
            sa.text("SELECT sku FROM visual_search.imgsearch_similar(CAST(:v AS vector), 1)"),
            {"v": _vector_text(_vectors(1)[0])},
        ).scalar_one()
    assert found == "a"
    engine.dispose()
    bad = CliRunner().invoke(main, ["--database-url", url, "--schema", "Robert'); DROP", "db", "upgrade"])
    assert bad.exit_code == 1 and "schema must be a lower-case PostgreSQL name" in bad.stderr


def test_a_schema_change_waiting_for_a_lock_gives_way_to_searches(
    engine: Engine, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A long query holds the catalogue; a downgrade that must drop an index waits for it. While a DDL statement
    # waits for its lock, every new search queues behind it: so it waits at most schema.LOCK_TIMEOUT, then gives
    # way, tries again, and at last says so in one line.
    catalogue.upsert_products(
        engine, [ProductRecord(sku=f"s{i}", category="c", embedding=v) for i, v in enumerate(_vectors(40))]
    )
    from imgsearch import indexes

    indexes.create_category_index(engine, "c")
    monkeypatch.setattr(schema, "LOCK_RETRY_WAITS", (0.5,))
    blocker = engine.connect()
    blocker.execute(sa.text("SELECT count(*) FROM products"))  # holds its lock until the transaction ends
    latencies: list[float] = []
    failures: list[BaseException] = []
    done = threading.Event()

    def search() -> None:
        searcher = db.create_engine(database_url)
        while not done.is_set():
            started = time.perf_counter()
            try:
                query.search(searcher, _vectors(1)[0], 5)
            except BaseException as exc:  # reported below
                failures.append(exc)
            latencies.append(time.perf_counter() - started)
        searcher.dispose()

    searching = threading.Thread(target=search)
    searching.start()
    try:
        started = time.perf_counter()
        with pytest.raises(BusyError, match="locked by another session"):
            schema.downgrade(engine, "0001")
        waited = time.perf_counter() - started
    finally:
        done.set()
        searching.join()
        blocker.rollback()
        blocker.close()
    assert 4 <= waited < 15  # two attempts of 2 s each, half a second apart
    assert failures == [] and max(latencies) < 3.5  # no search waited for longer than one attempt
    assert schema.current_revision(engine) == schema.head_revision()  # nothing changed
    schema.downgrade(engine, "0001")  # and with the catalogue free, it goes through
    assert schema.current_revision(engine) == "0001"


def _photo_indexes(engine: Engine) -> dict[str, tuple[str, str | None]]:
    """Every HNSW index over the photos: name -> (definition, its comment)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT c.relname, pg_get_indexdef(c.oid), obj_description(c.oid, 'pg_class') FROM pg_index i "
                "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam "
                "WHERE i.indrelid = 'imgsearch.product_images'::regclass AND a.amname = 'hnsw'"
            )
        ).all()
    return {name: (definition, note) for name, definition, note in rows}


def test_0008_rebuilds_the_photo_indexes_in_half_precision_and_keeps_every_row(
    make_database: Callable[..., str],
) -> None:
    engine = db.create_engine(make_database())
    schema.upgrade(engine, "0007")
    vectors = _vectors(900, seed=8)
    catalogue.upsert_products(
        engine,
        [
            ProductRecord(sku=f"p{i}", category=f"c{i % 3}", in_stock=i % 5 != 0, price=Decimal(i % 40), embedding=v)
            for i, v in enumerate(vectors)
        ],
    )
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT imgsearch.imgsearch_create_category_index('c1')"))
    before = _fingerprint(engine, "imgsearch.products")
    full = _photo_indexes(engine)
    assert all("vector_cosine_ops" in d for d, _ in full.values()) and len(full) == 2

    schema.upgrade(engine)
    half = _photo_indexes(engine)
    assert set(half) == set(full)  # the same names: the category index is still found by its name
    assert all("((embedding)::halfvec(512)) halfvec_cosine_ops" in d for d, _ in half.values()), half
    assert {n: note for n, (_, note) in half.items()} == {n: note for n, (_, note) in full.items()}
    assert "WHERE (category = 'c1'::text)" in next(d for d, note in half.values() if note == "c1")
    assert _fingerprint(engine, "imgsearch.products") == before
    # The searches walk the new indexes (a walk that missed them would sort, which the short way rules out) and
    # still find what exact search finds.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("SET imgsearch.exact_search_below = 0"))  # the category too is walked
        for options in ({}, {"categories": ["c1"]}):
            for seed in range(5):
                q = vectors[seed * 31] + np.random.default_rng(seed).normal(scale=0.3, size=512)
                got = [r.sku for r in query.search(conn, q, 10, **options)]
                want = [r.sku for r in query.search(engine, q, 10, exact=True, **options)]
                assert len(set(got) & set(want)) >= 9, (options, got, want)
        conn.execute(sa.text("SELECT pg_stat_force_next_flush()"))
    with engine.connect() as conn:
        scans = dict(
            conn.execute(
                sa.text("SELECT indexrelname, idx_scan FROM pg_stat_user_indexes WHERE indexrelname = ANY(:names)"),
                {"names": list(half)},
            ).all()
        )
    assert all(n > 0 for n in scans.values()) and len(scans) == 2, scans  # the main and the category index

    schema.downgrade(engine, "0007")
    assert {n: "vector_cosine_ops" in d for n, (d, _) in _photo_indexes(engine).items()} == dict.fromkeys(full, True)
    assert _fingerprint(engine, "imgsearch.products") == before
    engine.dispose()


def test_0011_searches_a_populated_catalogue_by_cost_and_takes_it_back(make_database: Callable[..., str]) -> None:
    engine = db.create_engine(make_database())
    schema.upgrade(engine, "0010")
    vectors = _vectors(1500, seed=11)
    catalogue.upsert_products(
        engine,
        [
            ProductRecord(sku=f"p{i}", category=f"c{i % 3}", in_stock=i % 5 != 0, price=Decimal(i % 40), embedding=v)
            for i, v in enumerate(vectors)
        ],
    )
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT imgsearch.imgsearch_create_category_index('c1')"))
        conn.execute(sa.text("ANALYZE imgsearch.products"))
    before = _fingerprint(engine, "imgsearch.products")
    q = vectors[7] + np.random.default_rng(0).normal(scale=0.3, size=512)
    cases = ({}, {"categories": ["c1"]}, {"categories": ["c0", "c1"], "max_price": 20}, {"max_price": 3})
    old = [[r.sku for r in query.search(engine, q, 10, **options)] for options in cases]

    schema.upgrade(engine)
    assert _fingerprint(engine, "imgsearch.products") == before
    for options, was in zip(cases, old, strict=True):
        got = [r.sku for r in query.search(engine, q, 10, **options)]
        want = [r.sku for r in query.search(engine, q, 10, exact=True, **options)]
        assert len(got) == 10 and len(set(got) & set(want)) >= 9 and len(set(got) & set(was)) >= 9, options
    many = query.search_many(engine, [q, vectors[3]], 5)
    assert [r.sku for r in many[0]] == [r.sku for r in query.search(engine, q, 5)]

    schema.downgrade(engine, "0010")
    assert _fingerprint(engine, "imgsearch.products") == before
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regproc('imgsearch.imgsearch_similar_many')")).scalar() is None
    assert [r.sku for r in query.search(engine, q, 10)] == old[0]
    schema.upgrade(engine)
    assert _fingerprint(engine, "imgsearch.products") == before
    engine.dispose()

"""docker/citus/distribute.sql on a catalogue migrated to the newest revision, with stand-ins for the Citus functions
it calls (there is no Citus here): the statements run, the tables are placed as docs/scaling.md plans, and every
key left on a distributed table is one Citus can enforce."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from imgsearch import embedded_server

REPO = Path(__file__).resolve().parent.parent
DISTRIBUTE = REPO / "docker" / "citus" / "distribute.sql"

# Stand-ins that record their calls. pg_dist_partition lives in pg_catalog under Citus; the script names it
# unqualified, so public's stand-in is found here.
STUBS = r"""
CREATE TABLE public.citus_calls (n serial, call text);
CREATE TABLE public.pg_dist_partition (logicalrelid regclass, partkey text, colocate_with text);
CREATE FUNCTION public.create_reference_table(t regclass) RETURNS void LANGUAGE sql AS $$
    INSERT INTO public.citus_calls (call) VALUES ('reference ' || t::text);
    INSERT INTO public.pg_dist_partition VALUES (t, NULL, NULL) $$;
CREATE FUNCTION public.create_distributed_table(t regclass, col text, colocate_with text DEFAULT 'default')
RETURNS void LANGUAGE sql AS $$
    INSERT INTO public.citus_calls (call)
    VALUES (format('distribute %s by %s, colocate with %s', t, col, colocate_with));
    INSERT INTO public.pg_dist_partition VALUES (t, col, colocate_with) $$;
CREATE FUNCTION public.truncate_local_data_after_distributing_table(t regclass) RETURNS void LANGUAGE sql AS $$
    INSERT INTO public.citus_calls (call) VALUES ('truncate local ' || t::text) $$;
CREATE FUNCTION public.run_command_on_workers(command text, parallel bool DEFAULT true,
    OUT nodename text, OUT nodeport int, OUT success bool, OUT result text) RETURNS SETOF record LANGUAGE sql AS $$
    INSERT INTO public.citus_calls (call) VALUES ('on workers: ' || command);
    SELECT 'citus-worker-1', 5432, true, 'ALTER DATABASE' $$;
"""

# Every PRIMARY KEY / UNIQUE constraint or unique index of a hash-distributed table, with its columns.
UNIQUE_KEYS = """
SELECT c.relname, i.indexrelid::regclass::text,
       array(SELECT a.attname::text FROM unnest(i.indkey) k JOIN pg_attribute a
             ON a.attrelid = i.indrelid AND a.attnum = k), d.partkey
FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN public.pg_dist_partition d ON d.logicalrelid = c.oid
WHERE i.indisunique AND d.partkey IS NOT NULL
"""

# Every foreign key between Citus tables: (referencing, its columns, its distribution column, referenced, ...).
FOREIGN_KEYS = """
SELECT f.conrelid::regclass::text,
       array(SELECT a.attname::text FROM unnest(f.conkey) WITH ORDINALITY k(n, o) JOIN pg_attribute a
             ON a.attrelid = f.conrelid AND a.attnum = k.n ORDER BY k.o), src.partkey,
       f.confrelid::regclass::text,
       array(SELECT a.attname::text FROM unnest(f.confkey) WITH ORDINALITY k(n, o) JOIN pg_attribute a
             ON a.attrelid = f.confrelid AND a.attnum = k.n ORDER BY k.o), dst.partkey, f.confdeltype
FROM pg_constraint f
JOIN public.pg_dist_partition src ON src.logicalrelid = f.conrelid
JOIN public.pg_dist_partition dst ON dst.logicalrelid = f.confrelid
WHERE f.contype = 'f'
"""


@pytest.fixture
def admin(database_url: str) -> Iterator[psycopg.Connection]:
    """The test catalogue's database as the server's superuser, with the stand-ins installed."""
    parsed = make_url(database_url)
    conn = psycopg.connect(host=parsed.query["host"], user="postgres", dbname=parsed.database, autocommit=True)
    conn.execute(STUBS)
    yield conn
    conn.close()


def distribute(conn: psycopg.Connection) -> subprocess.CompletedProcess[str]:
    info = conn.info
    return subprocess.run(
        [embedded_server.binary("psql"), "-X", "-q", "-h", info.host, "-U", info.user, "-d", info.dbname],
        stdin=DISTRIBUTE.open(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_distributes_the_catalogue_as_planned(admin: psycopg.Connection) -> None:
    result = distribute(admin)
    assert result.returncode == 0, result.stderr
    calls = [row[0] for row in admin.execute("SELECT call FROM public.citus_calls ORDER BY n")]
    assert calls[:13] == [
        "reference embedding_space",
        "reference embedding_space_next",
        "reference catalogue_settings",
        "reference search_spaces",
        "reference search_space_rows",
        "reference visual_vocabularies",
        "reference visual_word_frequencies",
        "distribute products by id, colocate with default",
        "distribute product_images by product_id, colocate with products",
        "distribute tuned_images by product_id, colocate with products",
        "distribute photo_features by image_id, colocate with none",
        "distribute visual_word_photos by image_id, colocate with photo_features",
        "distribute visual_word_postings by image_id, colocate with photo_features",
    ]
    tables = ("products", "product_images", "tuned_images", "embedding_space", "search_spaces", "search_space_rows")
    tables += ("photo_features", "visual_word_photos", "visual_word_postings", "visual_vocabularies")
    tables += ("visual_word_frequencies", "catalogue_settings", "embedding_space_next")
    assert sorted(calls[13:26]) == sorted(f"truncate local {t}" for t in tables)
    database = admin.info.dbname
    assert calls[26:] == [
        f"on workers: ALTER DATABASE {database} SET hnsw.iterative_scan = 'relaxed_order'",
        f"on workers: ALTER DATABASE {database} SET hnsw.ef_search = '100'",
        f"on workers: ALTER DATABASE {database} SET hnsw.max_scan_tuples = '50000'",
    ]
    local = admin.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = 'imgsearch'::regnamespace AND relkind = 'r' "
        "AND oid NOT IN (SELECT logicalrelid FROM public.pg_dist_partition)"
    ).fetchall()
    assert sorted(local) == [
        ("alembic_version",),
        ("api_keys",),
        ("search_event_counts",),
        ("search_events",),
        ("search_summaries",),
    ]


def test_every_key_left_is_one_citus_can_enforce(admin: psycopg.Connection) -> None:
    assert distribute(admin).returncode == 0
    keys = admin.execute(UNIQUE_KEYS).fetchall()
    assert {key[1] for key in keys} == {
        "imgsearch.products_pkey",
        "imgsearch.product_images_pkey",
        "imgsearch.uq_product_images_product_image",
        "imgsearch.tuned_images_pkey",
        "imgsearch.photo_features_pkey",
        "imgsearch.visual_word_photos_pkey",
        "imgsearch.visual_word_postings_pkey",
    }
    for table, index, columns, partkey in keys:
        assert partkey in columns, f"{table}: {index} {columns} leaves out the distribution column {partkey}"
    foreign = admin.execute(FOREIGN_KEYS).fetchall()
    assert {(fk[0], fk[3]) for fk in foreign} == {
        ("imgsearch.product_images", "imgsearch.products"),
        ("imgsearch.tuned_images", "imgsearch.product_images"),
        ("imgsearch.search_space_rows", "imgsearch.search_spaces"),
        ("imgsearch.visual_word_photos", "imgsearch.photo_features"),
        ("imgsearch.visual_word_photos", "imgsearch.visual_vocabularies"),
        ("imgsearch.visual_word_postings", "imgsearch.visual_word_photos"),
        ("imgsearch.visual_word_frequencies", "imgsearch.visual_vocabularies"),
    }
    for table, columns, partkey, target, target_columns, target_partkey, on_delete in foreign:
        assert on_delete == "c", f"{table} -> {target} lost its ON DELETE CASCADE"
        if partkey is None:
            assert target_partkey is None, f"reference table {table} refers to distributed {target}"
        elif target_partkey is not None:
            # Between co-located tables: the distribution columns face each other.
            assert columns.index(partkey) == target_columns.index(target_partkey), (table, columns, target_columns)


def test_ingestion_upsert_by_sku_has_no_key_left_after_distributing(admin: psycopg.Connection) -> None:
    """The cost docs/scaling.md states: products' SKUs lose their unique key, which ingestion's upsert needs."""
    assert distribute(admin).returncode == 0
    with pytest.raises(psycopg.errors.InvalidColumnReference, match="no unique or exclusion constraint"):
        admin.execute("INSERT INTO imgsearch.products (sku, category) VALUES ('a', 'b') ON CONFLICT (sku) DO NOTHING")
    plan = admin.execute("EXPLAIN SELECT 1 FROM imgsearch.products WHERE sku = 'a'").fetchall()
    assert any("ix_products_sku" in line[0] for line in plan), plan


def test_refuses_to_run_twice_or_with_an_active_tuned_space(admin: psycopg.Connection) -> None:
    before = admin.execute("SELECT count(*) FROM pg_constraint WHERE connamespace = 'imgsearch'::regnamespace")
    constraints = before.fetchone()
    admin.execute(
        "INSERT INTO imgsearch.search_spaces (method, products, photos, categories, catalogue_products, active) "
        "VALUES ('test', 0, 0, '{}', 0, true)"
    )
    refused = distribute(admin)
    assert refused.returncode != 0 and "a tuned search space is active" in refused.stderr
    after = admin.execute("SELECT count(*) FROM pg_constraint WHERE connamespace = 'imgsearch'::regnamespace")
    assert after.fetchone() == constraints
    assert admin.execute("SELECT count(*) FROM public.citus_calls").fetchone() == (0,)

    admin.execute("UPDATE imgsearch.search_spaces SET active = false")
    assert distribute(admin).returncode == 0
    again = distribute(admin)
    assert again.returncode != 0 and "products is already distributed" in again.stderr


def test_the_docs_point_at_the_script() -> None:
    assert "docker/citus/distribute.sql" in (REPO / "docs" / "scaling.md").read_text()

"""Category indexes: partial HNSW indexes that serve a category filter from that category's own graph.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Why: a category filter with a query photo from another category (a dress searched among watches) makes the
# iterative scan of the catalogue-wide graph walk through everything near the query before it meets the
# category, up to hnsw.max_scan_tuples, and then fall back to exact search over the whole category: hundreds
# of milliseconds per query at 100k products. A partial index `WHERE category = '<c>'` holds only that
# category; imgsearch_similar builds its statements with EXECUTE ... USING, whose plans see the bound
# category, so the planner picks the partial index by itself whenever the filter is that one category.
# DDL cannot take bind parameters, so the category reaches CREATE INDEX through format('%L') inside the
# database; clients call these functions with ordinary parameters. The index name is derived from the
# category's md5 (categories are free text and identifiers are limited to 63 bytes); the category itself is
# kept verbatim as the index's comment, which is how the indexes are listed.
NAME_FUNCTION = r"""
CREATE FUNCTION imgsearch_category_index_name(target_category text) RETURNS text
LANGUAGE sql IMMUTABLE AS $fn$
    SELECT 'ix_products_embedding_cat_' || left(md5(target_category), 16)
$fn$;
"""

EXISTS_FUNCTION = r"""
CREATE FUNCTION imgsearch_category_index_exists(index_name text) RETURNS boolean
LANGUAGE sql STABLE AS $fn$
    SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                   WHERE i.indrelid = 'products'::regclass AND c.relname = index_name)
$fn$;
"""

CREATE_FUNCTION = r"""
CREATE FUNCTION imgsearch_create_category_index(target_category text) RETURNS text
LANGUAGE plpgsql AS $fn$
DECLARE
    target_index text := imgsearch_category_index_name(target_category);
BEGIN
    -- "in_stock IN (true, false)" lets the (in_stock, category, price) b-tree find the category's rows.
    IF target_category IS NULL OR NOT EXISTS (
        SELECT 1 FROM products p WHERE p.in_stock IN (true, false) AND p.category = target_category
    ) THEN
        RAISE EXCEPTION 'imgsearch: no products in category %', coalesce(quote_literal(target_category), 'NULL')
            USING ERRCODE = 'P0002';
    END IF;
    IF NOT imgsearch_category_index_exists(target_index) THEN
        -- Same graph parameters as the catalogue-wide index (migration 0001).
        EXECUTE format('CREATE INDEX %I ON products USING hnsw (embedding vector_cosine_ops) '
                       'WITH (m = 16, ef_construction = 64) WHERE category = %L', target_index, target_category);
        EXECUTE format('COMMENT ON INDEX %I IS %L', target_index, target_category);
    END IF;
    RETURN target_index;
END
$fn$;
"""

DROP_FUNCTION = r"""
CREATE FUNCTION imgsearch_drop_category_index(target_category text) RETURNS boolean
LANGUAGE plpgsql AS $fn$
DECLARE
    target_index text := imgsearch_category_index_name(target_category);
BEGIN
    IF NOT imgsearch_category_index_exists(target_index) THEN
        RETURN false;
    END IF;
    EXECUTE format('DROP INDEX %I', target_index);
    RETURN true;
END
$fn$;
"""

LIST_FUNCTION = r"""
CREATE FUNCTION imgsearch_category_indexes()
RETURNS TABLE (category text, index_name text, products bigint, size_bytes bigint)
LANGUAGE sql STABLE AS $fn$
    SELECT x.category, x.index_name,
           -- counted through the (in_stock, category, price) b-tree, not by scanning the catalogue
           (SELECT count(*) FROM products p WHERE p.in_stock IN (true, false) AND p.category = x.category),
           x.size_bytes
    FROM (
        SELECT obj_description(c.oid, 'pg_class') AS category, c.relname::text AS index_name,
               pg_relation_size(c.oid) AS size_bytes
        FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE i.indrelid = 'products'::regclass AND i.indpred IS NOT NULL
          AND c.relname LIKE 'ix\_products\_embedding\_cat\_%'
    ) x
    ORDER BY 1
$fn$;
"""


def upgrade() -> None:
    op.execute(NAME_FUNCTION)
    op.execute(EXISTS_FUNCTION)
    op.execute(LIST_FUNCTION)
    op.execute(CREATE_FUNCTION)
    op.execute(DROP_FUNCTION)


def downgrade() -> None:
    # Revision 0001 knows nothing of category indexes: drop them with the functions that manage them.
    op.execute(
        r"""
        DO $do$
        DECLARE name text;
        BEGIN
            FOR name IN SELECT index_name FROM imgsearch_category_indexes() LOOP
                EXECUTE format('DROP INDEX %I', name);
            END LOOP;
        END
        $do$
        """
    )
    op.execute("DROP FUNCTION IF EXISTS imgsearch_drop_category_index(text)")
    op.execute("DROP FUNCTION IF EXISTS imgsearch_create_category_index(text)")
    op.execute("DROP FUNCTION IF EXISTS imgsearch_category_indexes()")
    op.execute("DROP FUNCTION IF EXISTS imgsearch_category_index_exists(text)")
    op.execute("DROP FUNCTION IF EXISTS imgsearch_category_index_name(text)")

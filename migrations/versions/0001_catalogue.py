"""Catalogue schema: products with VGG16 embeddings, the embedding space, and the search SQL functions.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import Vector

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The search function. Design notes are in docs/filtered-search.md. In short: pgvector's HNSW scan applies
# the WHERE clause after walking the graph, so a selective filter starves it. A bounded count decides:
# filters matching fewer than `imgsearch.exact_search_below` rows (default 1000) are answered by exact
# search over just those rows (cheap, via the b-tree indexes); broader ones by an iterative HNSW scan, and
# if that still finds fewer than k rows within hnsw.max_scan_tuples (everything near the query is filtered
# out), by exact search. Relaxed iterative scans return rows slightly out of order, so the index walk collects
# ef_search filtered candidates and the best k of them are returned in exact order.
# Filter fragments are fixed strings; every value is bound with USING. The session
# settings imgsearch.exact_search_below, imgsearch.ef_search, imgsearch.max_scan_tuples tune it and
# imgsearch.exact_search = on forces exact search (to measure recall).
SIMILAR_FUNCTION = r"""
CREATE FUNCTION imgsearch_similar(
    query vector,
    k integer DEFAULT 10,
    categories text[] DEFAULT NULL,
    in_stock_only boolean DEFAULT true,
    max_price numeric DEFAULT NULL,
    exclude_skus text[] DEFAULT NULL,
    below_price numeric DEFAULT NULL
) RETURNS TABLE (
    sku text, name text, category text, price numeric, in_stock boolean, image text, distance double precision
)
LANGUAGE plpgsql VOLATILE
SET hnsw.iterative_scan = 'relaxed_order'
SET hnsw.ef_search = '100'
SET hnsw.max_scan_tuples = '50000'
AS $fn$
#variable_conflict use_column
DECLARE
    exact_below integer := coalesce(
        nullif(current_setting('imgsearch.exact_search_below', true), '')::integer, 1000);
    where_sql text := 'WHERE true';
    columns_sql constant text :=
        'SELECT p.sku::text, p.name, p.category, p.price, p.in_stock, p.image, '
        '(p.embedding <=> $1)::double precision FROM products p ';
    matches bigint;
    found_ids bigint[];
    sort_setting text;
    ef integer;
BEGIN
    IF query IS NULL THEN
        RAISE EXCEPTION 'imgsearch: the query vector is NULL' USING ERRCODE = '22023';
    END IF;
    IF vector_dims(query) <> 512 THEN
        RAISE EXCEPTION 'imgsearch: the query vector has % dimensions, the catalogue stores 512',
            vector_dims(query) USING ERRCODE = '22023';
    END IF;
    IF vector_norm(query) = 0 THEN
        RAISE EXCEPTION 'imgsearch: the query vector is all zeros (no direction)' USING ERRCODE = '22023';
    END IF;
    IF k IS NULL OR k < 1 OR k > 1000 THEN
        RAISE EXCEPTION 'imgsearch: k must be between 1 and 1000, got %', k USING ERRCODE = '22023';
    END IF;
    IF max_price < 0 OR below_price < 0 THEN
        RAISE EXCEPTION 'imgsearch: a price limit cannot be negative' USING ERRCODE = '22023';
    END IF;

    IF categories IS NOT NULL THEN where_sql := where_sql || ' AND p.category = ANY($2)'; END IF;
    IF coalesce(in_stock_only, true) THEN where_sql := where_sql || ' AND p.in_stock'; END IF;
    IF max_price IS NOT NULL THEN where_sql := where_sql || ' AND p.price <= $3'; END IF;
    IF below_price IS NOT NULL THEN where_sql := where_sql || ' AND p.price < $4'; END IF;
    IF exclude_skus IS NOT NULL THEN where_sql := where_sql || ' AND p.sku <> ALL($5)'; END IF;

    IF current_setting('imgsearch.exact_search', true) = 'on' THEN
        RETURN QUERY EXECUTE columns_sql || where_sql || ' ORDER BY (p.embedding <=> $1) + 0, p.sku LIMIT $6'
            USING query, categories, max_price, below_price, exclude_skus, k;
        RETURN;
    END IF;

    IF where_sql <> 'WHERE true' THEN
        EXECUTE 'SELECT count(*) FROM (SELECT 1 FROM products p ' || where_sql || ' LIMIT $7) s'
            INTO matches USING query, categories, max_price, below_price, exclude_skus, k, exact_below;
        IF matches < exact_below THEN
            -- "+ 0" hides the distance from the planner's index matching: exact search over matching rows.
            RETURN QUERY EXECUTE columns_sql || where_sql || ' ORDER BY (p.embedding <=> $1) + 0, p.sku LIMIT $6'
                USING query, categories, max_price, below_price, exclude_skus, k;
            RETURN;
        END IF;
    END IF;

    -- Local to this call: the SET clauses above restore the caller's values when the function returns.
    ef := greatest(k, coalesce(nullif(current_setting('imgsearch.ef_search', true), '')::integer, 100));
    PERFORM set_config('hnsw.ef_search', ef::text, true);
    PERFORM set_config('hnsw.max_scan_tuples', coalesce(
        nullif(current_setting('imgsearch.max_scan_tuples', true), '')::integer, 50000)::text, true);
    -- The count said the filter is broad, so walk the index; without this the planner may still prefer to
    -- sort a mid-sized filtered set exactly, which costs O(matches) per query at catalogue scale.
    sort_setting := current_setting('enable_sort');
    PERFORM set_config('enable_sort', 'off', true);
    EXECUTE 'SELECT array_agg(c.id) FROM (SELECT p.id FROM products p ' || where_sql
            || ' ORDER BY p.embedding <=> $1 LIMIT $7) c'
        INTO found_ids USING query, categories, max_price, below_price, exclude_skus, k, ef;
    PERFORM set_config('enable_sort', sort_setting, true);

    IF coalesce(cardinality(found_ids), 0) >= k THEN
        RETURN QUERY EXECUTE columns_sql || 'WHERE p.id = ANY($2) ORDER BY (p.embedding <=> $1) + 0, p.sku LIMIT $3'
            USING query, found_ids, k;
        RETURN;
    END IF;

    -- The index walk ran out of budget before k rows passed the filter, or the catalogue holds fewer than k.
    RETURN QUERY EXECUTE columns_sql || where_sql || ' ORDER BY (p.embedding <=> $1) + 0, p.sku LIMIT $6'
        USING query, categories, max_price, below_price, exclude_skus, k;
END
$fn$;
"""

SIMILAR_TO_SKU_FUNCTION = r"""
CREATE FUNCTION imgsearch_similar_to_sku(
    target_sku text,
    k integer DEFAULT 10,
    categories text[] DEFAULT NULL,
    in_stock_only boolean DEFAULT true,
    max_price numeric DEFAULT NULL
) RETURNS TABLE (
    sku text, name text, category text, price numeric, in_stock boolean, image text, distance double precision
)
LANGUAGE plpgsql VOLATILE
AS $fn$
DECLARE
    target vector;
BEGIN
    SELECT p.embedding INTO target FROM products p WHERE p.sku = target_sku;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'imgsearch: unknown SKU %', target_sku USING ERRCODE = 'P0002';
    END IF;
    RETURN QUERY SELECT * FROM imgsearch_similar(
        target, k, categories, in_stock_only, max_price, ARRAY[target_sku]);
END
$fn$;
"""

CHEAPER_FUNCTION = r"""
CREATE FUNCTION imgsearch_cheaper(
    target_sku text,
    k integer DEFAULT 10,
    same_category boolean DEFAULT true
) RETURNS TABLE (
    sku text, name text, category text, price numeric, in_stock boolean, image text, distance double precision
)
LANGUAGE plpgsql VOLATILE
AS $fn$
DECLARE
    target record;
BEGIN
    SELECT p.embedding, p.price, p.category INTO target FROM products p WHERE p.sku = target_sku;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'imgsearch: unknown SKU %', target_sku USING ERRCODE = 'P0002';
    END IF;
    IF target.price IS NULL THEN
        RAISE EXCEPTION 'imgsearch: SKU % has no price, so nothing can be cheaper', target_sku
            USING ERRCODE = '22023';
    END IF;
    RETURN QUERY SELECT * FROM imgsearch_similar(
        target.embedding, k,
        CASE WHEN coalesce(same_category, true) THEN ARRAY[target.category] END,
        true, NULL, ARRAY[target_sku], target.price);
END
$fn$;
"""

TOUCH_FUNCTION = r"""
CREATE FUNCTION imgsearch_touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$fn$;
"""


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.create_table(
        "embedding_space",
        sa.Column("id", sa.Boolean(), server_default=sa.text("true"), primary_key=True),
        sa.Column("model_name", sa.Text(), nullable=False),
        sa.Column("weights_id", sa.Text(), nullable=False),
        sa.Column("preprocessing_version", sa.Text(), nullable=False),
        sa.Column("dimension", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("id", name="ck_embedding_space_single_row"),
        sa.CheckConstraint("dimension = 512", name="ck_embedding_space_dimension"),
    )
    op.create_table(
        "products",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), primary_key=True),
        sa.Column("sku", sa.String(255), nullable=False, unique=True),
        sa.Column("name", sa.Text()),
        sa.Column("category", sa.Text(), nullable=False),
        sa.Column("price", sa.Numeric(12, 2)),
        sa.Column("in_stock", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("image", sa.Text()),
        sa.Column("image_sha256", sa.String(64)),
        sa.Column("embedding", Vector(512), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("length(btrim(sku)) > 0 AND length(sku) <= 255", name="ck_products_sku"),
        sa.CheckConstraint("length(btrim(category)) > 0", name="ck_products_category"),
        sa.CheckConstraint("price >= 0", name="ck_products_price"),
        sa.CheckConstraint("image_sha256 ~ '^[0-9a-f]{64}$'", name="ck_products_image_sha256"),
        sa.CheckConstraint("vector_norm(embedding) > 0", name="ck_products_embedding_nonzero"),
    )
    # Keep the 2 KiB vector inside the row instead of TOAST: exact scans and index result fetches then read
    # one heap page per product rather than also chasing a TOAST pointer.
    op.execute("ALTER TABLE products ALTER COLUMN embedding SET STORAGE PLAIN")
    op.create_index(
        "ix_products_embedding",
        "products",
        ["embedding"],
        postgresql_using="hnsw",
        postgresql_with={"m": 16, "ef_construction": 64},
        postgresql_ops={"embedding": "vector_cosine_ops"},
    )
    op.create_index("ix_products_filter", "products", ["in_stock", "category", "price"])
    op.create_index("ix_products_price", "products", ["price"])
    op.execute(TOUCH_FUNCTION)
    op.execute(
        "CREATE TRIGGER products_touch_updated_at BEFORE UPDATE ON products FOR EACH ROW "
        "EXECUTE FUNCTION imgsearch_touch_updated_at()"
    )
    op.execute(SIMILAR_FUNCTION)
    op.execute(SIMILAR_TO_SKU_FUNCTION)
    op.execute(CHEAPER_FUNCTION)


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS imgsearch_cheaper(text, integer, boolean)")
    op.execute("DROP FUNCTION IF EXISTS imgsearch_similar_to_sku(text, integer, text[], boolean, numeric)")
    op.execute("DROP FUNCTION IF EXISTS imgsearch_similar(vector, integer, text[], boolean, numeric, text[], numeric)")
    op.drop_table("products")
    op.execute("DROP FUNCTION IF EXISTS imgsearch_touch_updated_at()")
    op.drop_table("embedding_space")
    # The vector extension stays: other tables in this database may use it.

-- Several photos per product. The vectors move from products to product_images (one row per photo), so that
-- a product has 1..N photos, a search ranks products by their best-matching photo, and stock or price changes
-- touch only the small products rows (no vector, no HNSW index there).
-- Run by revision 0005 inside imgsearch's schema (the first of the search_path).

CREATE TABLE product_images (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    product_id bigint NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    -- where the photo is: an absolute path, a URL, or '' for a vector given without a picture (Python API)
    image text NOT NULL DEFAULT '',
    position integer NOT NULL DEFAULT 0,
    image_sha256 varchar(64),
    -- HTTP validators of a photo fetched from a URL: a re-ingest asks the server whether it changed
    etag text,
    last_modified text,
    -- the product's category, kept in step by triggers: category indexes are partial indexes on this table
    category text NOT NULL,
    embedding vector(512) NOT NULL,
    -- the foreground's colour signature (imgsearch/colour.py): tells apart colour variants that VGG16 finds
    -- alike, for the near-duplicate report; NULL for photos ingested before it existed (computed again on ingest)
    colour vector(44),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT uq_product_images_product_image UNIQUE (product_id, image),
    CONSTRAINT ck_product_images_image_sha256 CHECK (image_sha256 ~ '^[0-9a-f]{64}$'),
    CONSTRAINT ck_product_images_embedding_nonzero CHECK (vector_norm(embedding) > 0),
    CONSTRAINT ck_product_images_position CHECK (position >= 0)
);
-- Vectors stay in the row (not TOAST): an exact scan or an index result costs one heap page per photo.
ALTER TABLE product_images ALTER COLUMN embedding SET STORAGE PLAIN;

-- Every product's photo, as it was: same reference, hash, vector and timestamps.
INSERT INTO product_images (product_id, image, position, image_sha256, category, embedding, created_at, updated_at)
SELECT id, coalesce(image, ''), 0, image_sha256, category, embedding, created_at, updated_at FROM products;

-- Category indexes move to the new table with their categories (built again below).
CREATE TEMP TABLE imgsearch_moved_category_indexes ON COMMIT DROP AS
SELECT obj_description(c.oid, 'pg_class') AS category
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE i.indrelid = 'products'::regclass AND i.indpred IS NOT NULL
  AND c.relname LIKE 'ix\_products\_embedding\_cat\_%';

ALTER TABLE products DROP COLUMN embedding, DROP COLUMN image, DROP COLUMN image_sha256;
-- in_stock leaves the indexes, so that a stock sync's updates are HOT (no index entry written per change).
DROP INDEX ix_products_filter;
CREATE INDEX ix_products_category_price ON products (category, price);
-- Rewrites products, which reclaims the ~2 KB per row the dropped vectors occupied (an ALTER TABLE form that
-- rewrites the table is PostgreSQL's documented way; the value itself does not change).
ALTER TABLE products ALTER COLUMN price TYPE numeric(12, 2) USING price + 0;

CREATE INDEX ix_product_images_product ON product_images (product_id, position);
CREATE INDEX ix_product_images_embedding ON product_images
    USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64);

CREATE TRIGGER product_images_touch_updated_at BEFORE UPDATE ON product_images
    FOR EACH ROW EXECUTE FUNCTION imgsearch_touch_updated_at();
CREATE TRIGGER product_images_category BEFORE INSERT OR UPDATE OF product_id, category ON product_images
    FOR EACH ROW EXECUTE FUNCTION imgsearch_image_category();
CREATE TRIGGER products_image_category AFTER UPDATE OF category ON products
    FOR EACH ROW WHEN (OLD.category IS DISTINCT FROM NEW.category) EXECUTE FUNCTION imgsearch_product_category();
-- (the category indexes are built again by the migration, once the functions that build them are in place)

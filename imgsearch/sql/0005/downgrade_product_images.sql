-- Back to one photo per product, vectors in products: only possible while every product has exactly one photo.
DO $do$
DECLARE
    several bigint;
    none bigint;
BEGIN
    SELECT count(*) INTO several FROM (
        SELECT 1 FROM product_images GROUP BY product_id HAVING count(*) > 1) s;
    SELECT count(*) INTO none FROM products p
        WHERE NOT EXISTS (SELECT 1 FROM product_images i WHERE i.product_id = p.id);
    IF several > 0 THEN
        RAISE EXCEPTION 'imgsearch: % products have several photos; the older schema holds one per product: remove '
            'the extra photos first (ingest with --prune-images)', several USING ERRCODE = '55000';
    END IF;
    IF none > 0 THEN
        RAISE EXCEPTION 'imgsearch: % products have no photo; the older schema needs one per product', none
            USING ERRCODE = '55000';
    END IF;
END
$do$;

CREATE TEMP TABLE imgsearch_moved_category_indexes ON COMMIT DROP AS
SELECT category FROM imgsearch_category_indexes();

ALTER TABLE products ADD COLUMN image text, ADD COLUMN image_sha256 varchar(64), ADD COLUMN embedding vector(512);
-- The products keep their timestamps: this is a move, not a change.
ALTER TABLE products DISABLE TRIGGER products_touch_updated_at;
UPDATE products p SET image = nullif(i.image, ''), image_sha256 = i.image_sha256, embedding = i.embedding
FROM product_images i WHERE i.product_id = p.id;
ALTER TABLE products ENABLE TRIGGER products_touch_updated_at;
ALTER TABLE products ALTER COLUMN embedding SET NOT NULL, ALTER COLUMN embedding SET STORAGE PLAIN;
ALTER TABLE products ADD CONSTRAINT ck_products_image_sha256 CHECK (image_sha256 ~ '^[0-9a-f]{64}$'),
    ADD CONSTRAINT ck_products_embedding_nonzero CHECK (vector_norm(embedding) > 0);
DROP TABLE product_images;
DROP TRIGGER products_image_category ON products;
DROP INDEX ix_products_category_price;
CREATE INDEX ix_products_filter ON products (in_stock, category, price);
CREATE INDEX ix_products_embedding ON products
    USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64);

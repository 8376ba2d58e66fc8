-- The category indexes: category, index name, the category's products and the index's size.
CREATE OR REPLACE FUNCTION imgsearch_category_indexes()
RETURNS TABLE (category text, index_name text, products bigint, size_bytes bigint)
LANGUAGE sql STABLE
SET search_path FROM CURRENT
AS $fn$
    SELECT x.category, x.index_name,
           -- counted through the (category, price) b-tree, not by scanning the catalogue
           (SELECT count(*) FROM products p WHERE p.category = x.category),
           x.size_bytes
    FROM (
        SELECT obj_description(c.oid, 'pg_class') AS category, c.relname::text AS index_name,
               pg_relation_size(c.oid) AS size_bytes
        FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE i.indrelid = 'product_images'::regclass AND i.indpred IS NOT NULL
          AND c.relname LIKE 'ix\_products\_embedding\_cat\_%'
    ) x
    ORDER BY 1
$fn$;

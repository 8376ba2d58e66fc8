-- Name of a category's partial HNSW index: derived from the category's md5, since categories are free text
-- and identifiers are limited to 63 bytes. The category itself is kept verbatim as the index's comment.
CREATE OR REPLACE FUNCTION imgsearch_category_index_name(target_category text) RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path FROM CURRENT
AS $fn$
    SELECT 'ix_products_embedding_cat_' || left(md5(target_category), 16)
$fn$;

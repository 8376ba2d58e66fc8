-- Name of a category's partial HNSW index on the tuned space's vectors (tuned_images): like
-- imgsearch_category_index_name, from the category's md5; the category is kept as the index's comment.
CREATE OR REPLACE FUNCTION imgsearch_tuned_category_index_name(target_category text) RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path FROM CURRENT
AS $fn$
    SELECT 'ix_tuned_images_cat_' || left(md5(target_category), 16)
$fn$;

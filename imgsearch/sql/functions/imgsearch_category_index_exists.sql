-- Whether an index of this name exists on the catalogue's photos.
CREATE OR REPLACE FUNCTION imgsearch_category_index_exists(index_name text) RETURNS boolean
LANGUAGE sql STABLE
SET search_path FROM CURRENT
AS $fn$
    SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                   WHERE i.indrelid = 'product_images'::regclass AND c.relname = index_name)
$fn$;

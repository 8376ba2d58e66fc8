-- Every category index, on the photos' raw vectors (product_images) or on the tuned space's (tuned_images), with
-- its category and whether it is valid (a failed concurrent build leaves an invalid index behind, which searches
-- ignore and writes still maintain).
SELECT obj_description(c.oid, 'pg_class') AS category, c.relname::text AS index_name, i.indisvalid AS valid,
       t.relname::text AS table_name
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid
WHERE i.indrelid IN ('product_images'::regclass, 'tuned_images'::regclass) AND i.indpred IS NOT NULL
  AND (c.relname LIKE 'ix\_products\_embedding\_cat\_%' OR c.relname LIKE 'ix\_tuned\_images\_cat\_%')

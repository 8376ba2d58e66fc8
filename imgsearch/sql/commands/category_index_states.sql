-- Every category index with its category and whether it is valid (a failed concurrent build leaves an
-- invalid index behind, which searches ignore and writes still maintain).
SELECT obj_description(c.oid, 'pg_class') AS category, c.relname::text AS index_name, i.indisvalid AS valid
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE i.indrelid = 'product_images'::regclass AND i.indpred IS NOT NULL
  AND c.relname LIKE 'ix\_products\_embedding\_cat\_%'

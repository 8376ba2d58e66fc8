-- The photos' IVF index (imgsearch/scan_index.py): its lists, whether searches can use it and its size; no row when
-- there is none.
SELECT o.option_value::integer AS lists, x.indisvalid AS valid, pg_relation_size(x.indexrelid) AS size_bytes
FROM pg_index x
JOIN pg_class c ON c.oid = x.indexrelid
CROSS JOIN LATERAL pg_options_to_table(c.reloptions) o
WHERE x.indexrelid = to_regclass('ix_product_images_scan') AND o.option_name = 'lists'

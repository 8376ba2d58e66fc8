-- Second step of imgsearch tune, once tuned_images_next is filled: the same indexes as tuned_images (the HNSW
-- graph over half-precision vectors, and the twin of every category index of the raw vectors), under temporary
-- names. Nobody searches this
-- table yet, so nothing waits for the builds.
CREATE OR REPLACE FUNCTION imgsearch_index_space_table() RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $fn$
DECLARE
    target_category text;
BEGIN
    ALTER TABLE tuned_images_next ADD CONSTRAINT tuned_images_next_pkey PRIMARY KEY (image_id);
    CREATE INDEX ix_tuned_images_next_product ON tuned_images_next (product_id);
    CREATE INDEX ix_tuned_images_next_embedding ON tuned_images_next
        USING hnsw ((embedding::halfvec(512)) halfvec_cosine_ops) WITH (m = 16, ef_construction = 64);
    FOR target_category IN
        SELECT obj_description(c.oid, 'pg_class') FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE i.indrelid = 'product_images'::regclass AND i.indpred IS NOT NULL AND i.indisvalid
          AND c.relname LIKE 'ix\_products\_embedding\_cat\_%'
    LOOP
        EXECUTE format('CREATE INDEX %I ON tuned_images_next '
                       'USING hnsw ((embedding::halfvec(512)) halfvec_cosine_ops) '
                       'WITH (m = 16, ef_construction = 64) WHERE category = %L',
                       'ix_tuned_next_cat_' || left(md5(target_category), 16), target_category);
        EXECUTE format('COMMENT ON INDEX %I IS %L', 'ix_tuned_next_cat_' || left(md5(target_category), 16),
                       target_category);
    END LOOP;
    ANALYZE tuned_images_next;
END
$fn$;

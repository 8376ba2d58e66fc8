-- Builds a category index: a partial HNSW index over the photos of one category, `WHERE category = '<c>'`,
-- that serves searches filtered to that one category (imgsearch_similar_multi's EXECUTE ... USING plans see the
-- bound category, so the planner picks it by itself), and its twin over the tuned space's vectors. Like every
-- photo index since revision 0008, it indexes the vectors rounded to half precision (embedding::halfvec(512)).
-- DDL cannot take bind parameters, so the category reaches CREATE INDEX through format('%L') here, inside the
-- database; clients pass it as an ordinary parameter.
CREATE OR REPLACE FUNCTION imgsearch_create_category_index(target_category text) RETURNS text
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $fn$
DECLARE
    target_index text := imgsearch_category_index_name(target_category);
    tuned_index text;
BEGIN
    IF target_category IS NULL OR NOT EXISTS (SELECT 1 FROM products p WHERE p.category = target_category) THEN
        RAISE EXCEPTION 'imgsearch: no products in category %', coalesce(quote_literal(target_category), 'NULL')
            USING ERRCODE = 'P0002';
    END IF;
    IF NOT imgsearch_category_index_exists(target_index) THEN
        -- Same graph parameters and half-precision vectors as the catalogue-wide index (revision 0008).
        EXECUTE format('CREATE INDEX %I ON product_images '
                       'USING hnsw ((embedding::halfvec(512)) halfvec_cosine_ops) '
                       'WITH (m = 16, ef_construction = 64) WHERE category = %L', target_index, target_category);
        EXECUTE format('COMMENT ON INDEX %I IS %L', target_index, target_category);
    END IF;
    -- The same index over the tuned space's vectors while one is active (imgsearch tune builds them otherwise).
    tuned_index := imgsearch_tuned_category_index_name(target_category);
    IF imgsearch_active_space() IS NOT NULL AND to_regclass(quote_ident(tuned_index)) IS NULL THEN
        EXECUTE format('CREATE INDEX %I ON tuned_images '
                       'USING hnsw ((embedding::halfvec(512)) halfvec_cosine_ops) '
                       'WITH (m = 16, ef_construction = 64) WHERE category = %L', tuned_index, target_category);
        EXECUTE format('COMMENT ON INDEX %I IS %L', tuned_index, target_category);
    END IF;
    RETURN target_index;
END
$fn$;

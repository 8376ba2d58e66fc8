-- Builds a category index: a partial HNSW index over the photos of one category, `WHERE category = '<c>'`,
-- that serves searches filtered to that one category (imgsearch_similar_multi's EXECUTE ... USING plans see the
-- bound category, so the planner picks it by itself). DDL cannot take bind parameters, so the category reaches
-- CREATE INDEX through format('%L') here, inside the database; clients pass it as an ordinary parameter.
CREATE OR REPLACE FUNCTION imgsearch_create_category_index(target_category text) RETURNS text
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $fn$
DECLARE
    target_index text := imgsearch_category_index_name(target_category);
BEGIN
    IF target_category IS NULL OR NOT EXISTS (SELECT 1 FROM products p WHERE p.category = target_category) THEN
        RAISE EXCEPTION 'imgsearch: no products in category %', coalesce(quote_literal(target_category), 'NULL')
            USING ERRCODE = 'P0002';
    END IF;
    IF NOT imgsearch_category_index_exists(target_index) THEN
        -- Same graph parameters as the catalogue-wide index.
        EXECUTE format('CREATE INDEX %I ON product_images USING hnsw (embedding vector_cosine_ops) '
                       'WITH (m = 16, ef_construction = 64) WHERE category = %L', target_index, target_category);
        EXECUTE format('COMMENT ON INDEX %I IS %L', target_index, target_category);
    END IF;
    RETURN target_index;
END
$fn$;

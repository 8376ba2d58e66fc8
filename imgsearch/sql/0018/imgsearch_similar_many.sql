-- Many searches in one call: for each query vector on its own, the k products nearest to it under the same
-- filters (imgsearch_similar), numbered by the vector's place in the array (query_index, from 1) and best first
-- within it. For a shop precomputing "similar products" for every page, a duplicates report or an evaluation:
-- one round trip for up to 1000 searches, each answered as a single one would be.
CREATE OR REPLACE FUNCTION imgsearch_similar_many(
    queries vector[],
    k integer DEFAULT 10,
    categories text[] DEFAULT NULL,
    in_stock_only boolean DEFAULT true,
    max_price numeric DEFAULT NULL,
    exclude_skus text[] DEFAULT NULL,
    below_price numeric DEFAULT NULL,
    filters jsonb DEFAULT NULL
) RETURNS TABLE (
    query_index integer, sku text, name text, category text, price numeric, in_stock boolean, image text,
    distance double precision
)
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $fn$
#variable_conflict use_column
BEGIN
    IF queries IS NULL OR cardinality(queries) NOT BETWEEN 1 AND 1000 OR array_position(queries, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'imgsearch: give 1 to 1000 query vectors, none of them NULL' USING ERRCODE = '22023';
    END IF;
    FOR n IN 1..cardinality(queries) LOOP
        RETURN QUERY SELECT n, s.* FROM imgsearch_similar(
            queries[n], k, categories, in_stock_only, max_price, exclude_skus, below_price, filters) s;
    END LOOP;
END
$fn$;

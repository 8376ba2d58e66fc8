-- The k products nearest to a query vector under filters (see imgsearch_similar_multi, which it calls).
CREATE OR REPLACE FUNCTION imgsearch_similar(
    query vector,
    k integer DEFAULT 10,
    categories text[] DEFAULT NULL,
    in_stock_only boolean DEFAULT true,
    max_price numeric DEFAULT NULL,
    exclude_skus text[] DEFAULT NULL,
    below_price numeric DEFAULT NULL
) RETURNS TABLE (
    sku text, name text, category text, price numeric, in_stock boolean, image text, distance double precision
)
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $fn$
BEGIN
    IF query IS NULL THEN
        RAISE EXCEPTION 'imgsearch: the query vector is NULL' USING ERRCODE = '22023';
    END IF;
    RETURN QUERY SELECT * FROM imgsearch_similar_multi(
        ARRAY[query], k, categories, in_stock_only, max_price, exclude_skus, below_price);
END
$fn$;

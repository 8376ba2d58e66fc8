-- Products that look like a catalogue product (all its photos), the product itself excluded.
CREATE OR REPLACE FUNCTION imgsearch_similar_to_sku(
    target_sku text,
    k integer DEFAULT 10,
    categories text[] DEFAULT NULL,
    in_stock_only boolean DEFAULT true,
    max_price numeric DEFAULT NULL,
    filters jsonb DEFAULT NULL
) RETURNS TABLE (
    sku text, name text, category text, price numeric, in_stock boolean, image text, distance double precision
)
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    photos vector[] := imgsearch_product_photos(target_sku);
BEGIN
    IF photos IS NULL THEN
        RAISE EXCEPTION 'imgsearch: unknown SKU %', target_sku USING ERRCODE = 'P0002';
    END IF;
    RETURN QUERY SELECT * FROM imgsearch_similar_multi(
        photos, k, categories, in_stock_only, max_price, ARRAY[target_sku], NULL, filters);
END
$fn$;

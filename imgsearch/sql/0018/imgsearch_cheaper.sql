-- Visually similar products (to all the product's photos) that are in stock and strictly cheaper.
CREATE OR REPLACE FUNCTION imgsearch_cheaper(
    target_sku text,
    k integer DEFAULT 10,
    same_category boolean DEFAULT true,
    filters jsonb DEFAULT NULL
) RETURNS TABLE (
    sku text, name text, category text, price numeric, in_stock boolean, image text, distance double precision
)
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    target record;
BEGIN
    SELECT p.price, p.category INTO target FROM products p WHERE p.sku = target_sku;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'imgsearch: unknown SKU %', target_sku USING ERRCODE = 'P0002';
    END IF;
    IF target.price IS NULL THEN
        RAISE EXCEPTION 'imgsearch: SKU % has no price, so nothing can be cheaper', target_sku
            USING ERRCODE = '22023';
    END IF;
    RETURN QUERY SELECT * FROM imgsearch_similar_multi(
        imgsearch_product_photos(target_sku), k,
        CASE WHEN coalesce(same_category, true) THEN ARRAY[target.category] END,
        true, NULL, ARRAY[target_sku], target.price, filters);
END
$fn$;

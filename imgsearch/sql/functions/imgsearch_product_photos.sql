-- The photos of a catalogue product as query vectors (at most 100, in their order), or NULL if there is no such
-- product. Several photos search together: a candidate's distance is its closest photo to any of them.
CREATE OR REPLACE FUNCTION imgsearch_product_photos(target_sku text) RETURNS vector[]
LANGUAGE sql STABLE
SET search_path FROM CURRENT
AS $fn$
    SELECT array_agg(x.embedding ORDER BY x.position, x.id) FROM (
        SELECT i.embedding, i.position, i.id FROM products p JOIN product_images i ON i.product_id = p.id
        WHERE p.sku = target_sku ORDER BY i.position, i.id LIMIT 100) x
$fn$;

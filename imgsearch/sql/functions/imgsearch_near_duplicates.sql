-- Pairs of different products whose photos are near-identical: the duplicate listings a shop wants to find
-- before its customers do (the same item at two prices). Two photos are near-identical when their VGG16 cosine
-- distance is at most max_distance and their colour signatures (imgsearch/colour.py) are at most
-- max_colour_distance apart (L2): VGG16 sees shape more than colour, so without the colour check the black and
-- the brown version of one shoe would pass. A photo without a colour signature yet (ingested before it
-- existed) is compared by VGG16 alone, with the stricter distance_without_colour. Defaults measured on planted
-- duplicates: docs/quality.md.
--
-- Each photo looks for its nearest photos in the same category through the HNSW index (a category index when
-- there is one), so the cost grows with the catalogue, not with its square; a pair comes back once, with its
-- closest pair of photos. neighbours bounds how many photos each photo looks at: a product with more
-- near-identical twins than that still joins them through the twins' own lists (imgsearch duplicates groups
-- the pairs into components).
CREATE OR REPLACE FUNCTION imgsearch_near_duplicates(
    max_distance double precision DEFAULT 0.125,
    categories text[] DEFAULT NULL,
    neighbours integer DEFAULT 10,
    max_colour_distance double precision DEFAULT 0.125,
    distance_without_colour double precision DEFAULT 0.0575
) RETURNS TABLE (
    sku_a text, sku_b text, distance double precision, colour_distance double precision, image_a text,
    image_b text
)
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
SET hnsw.iterative_scan = 'relaxed_order'
SET hnsw.max_scan_tuples = '20000'
-- The nearest photos come from the HNSW index, never from sorting a whole category per photo (quadratic).
SET enable_sort = 'off'
AS $fn$
#variable_conflict use_column
BEGIN
    IF max_distance IS NULL OR NOT max_distance BETWEEN 0 AND 2
       OR distance_without_colour IS NULL OR NOT distance_without_colour BETWEEN 0 AND 2 THEN
        RAISE EXCEPTION 'imgsearch: max_distance must be between 0 and 2, got %', max_distance USING ERRCODE = '22023';
    END IF;
    IF max_colour_distance IS NULL OR NOT max_colour_distance BETWEEN 0 AND 2 THEN
        RAISE EXCEPTION 'imgsearch: max_colour_distance must be between 0 and 2, got %', max_colour_distance
            USING ERRCODE = '22023';
    END IF;
    IF neighbours IS NULL OR neighbours < 1 OR neighbours > 100 THEN
        RAISE EXCEPTION 'imgsearch: neighbours must be between 1 and 100, got %', neighbours USING ERRCODE = '22023';
    END IF;
    PERFORM set_config('hnsw.ef_search', greatest(40, neighbours + 1)::text, true);
    RETURN QUERY
    WITH found AS (
        SELECT least(i.product_id, n.product_id) AS low, greatest(i.product_id, n.product_id) AS high,
               n.d, n.c, CASE WHEN i.product_id < n.product_id THEN i.image ELSE n.image END AS low_image,
               CASE WHEN i.product_id < n.product_id THEN n.image ELSE i.image END AS high_image
        FROM product_images i
        CROSS JOIN LATERAL (
            SELECT j.product_id, j.image, (j.embedding <=> i.embedding)::double precision AS d,
                   (j.colour <-> i.colour)::double precision AS c
            FROM product_images j
            WHERE j.category = i.category
            ORDER BY j.embedding::halfvec(512) <=> i.embedding::halfvec(512)
            LIMIT neighbours + 1
        ) n
        WHERE (categories IS NULL OR i.category = ANY(categories))
          AND n.product_id <> i.product_id
          AND CASE WHEN n.c IS NULL THEN n.d <= distance_without_colour
                   ELSE n.d <= max_distance AND n.c <= max_colour_distance END
    ), best AS (
        SELECT DISTINCT ON (f.low, f.high) f.low, f.high, f.d, f.c, f.low_image, f.high_image
        FROM found f ORDER BY f.low, f.high, f.d
    )
    SELECT a.sku::text, b.sku::text, best.d, best.c, nullif(best.low_image, ''), nullif(best.high_image, '')
    FROM best JOIN products a ON a.id = best.low JOIN products b ON b.id = best.high
    ORDER BY best.d, a.sku, b.sku;
END
$fn$;

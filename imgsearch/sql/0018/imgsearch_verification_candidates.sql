-- The candidates of a verified photo search, in one round trip: the n products nearest to the query vector
-- under the filters (imgsearch_similar: exactly n whenever n products match), each with every one of its photos
-- and their local features (NULL where a photo has none of this extractor's). The caller verifies them
-- (imgsearch/local_features.py) and puts the verified matches first; rank is the product's place in the
-- global ranking (1 = nearest).
CREATE OR REPLACE FUNCTION imgsearch_verification_candidates(
    query vector,
    n integer,
    extractor text,
    categories text[] DEFAULT NULL,
    in_stock_only boolean DEFAULT true,
    max_price numeric DEFAULT NULL,
    exclude_skus text[] DEFAULT NULL,
    filters jsonb DEFAULT NULL
) RETURNS TABLE (
    rank bigint, sku text, name text, category text, price numeric, in_stock boolean, image text,
    distance double precision, photo text, width integer, height integer, points bytea, descriptors bytea
)
LANGUAGE sql VOLATILE
SET search_path FROM CURRENT
AS $fn$
    SELECT s.rank, s.sku, s.name, s.category, s.price, s.in_stock, s.image, s.distance,
           i.image, f.width, f.height, f.points, f.descriptors
    FROM imgsearch_similar(query, n, categories, in_stock_only, max_price, exclude_skus, NULL, filters)
         WITH ORDINALITY AS s (sku, name, category, price, in_stock, image, distance, rank)
    JOIN products p ON p.sku = s.sku
    JOIN product_images i ON i.product_id = p.id
    LEFT JOIN photo_features f ON f.image_id = i.id AND f.extractor = imgsearch_verification_candidates.extractor
    ORDER BY s.rank, i.position, i.id
$fn$;

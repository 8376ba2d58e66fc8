-- The n products nearest to the query vector found through the photos' IVF index (ix_product_images_scan:
-- pgvector ivfflat over every photo's raw vector, normalised; imgsearch/scan_index.py), under the filters: the
-- second source of a verified photo search's global candidates (imgsearch_photo_candidates). A shopper's photo
-- is unlike the catalogue's photos; among many look-alike products the HNSW walk can stay in their dense part
-- and never reach the photographed product, while an IVF scan reads whole lists of photos around the query
-- (docs/quality.md, "Candidates at scale").
--
-- Returns nothing when the index does not exist (or is not valid yet), when a tuned search space is searched
-- (its distances are not the raw ones these are compared with) or when the setting imgsearch.scan_probes is 0.
-- Reads the imgsearch.scan_probes nearest lists (default: twice the square root of the index's lists, twice
-- pgvector's advice: a shopper's photo of loose produce has its neighbours in many lists; chosen by measurement,
-- benchmarks/results/global-candidates-100k.md), takes the 4n photos nearest there (40n when fewer than n of
-- their products pass the filters), keeps the first n of their products that pass and ranks those by the exact
-- distance of their nearest photo (that photo is the product's image); fewer than n come back when fewer of
-- those photos' products pass. Each product comes with every one of its photos and their local features, as in
-- imgsearch_verification_candidates.
CREATE OR REPLACE FUNCTION imgsearch_scan_candidates(
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
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $fn$
#variable_conflict use_column
DECLARE
    lists integer;
    probes integer;
    previous text := current_setting('ivfflat.probes', true);
    only_in_stock boolean := coalesce(in_stock_only, true);
    attribute_filter jsonpath := imgsearch_attribute_filter(filters);
    words_query tsquery := imgsearch_words_query(nullif(current_setting('imgsearch.words', true), ''));
    target halfvec(512);
    best_ids bigint[];
    best_distances double precision[];
    best_images text[];
    photo_limit integer := 4 * n;
    narrowed boolean := only_in_stock OR max_price IS NOT NULL OR categories IS NOT NULL OR exclude_skus IS NOT NULL
                        OR attribute_filter IS NOT NULL OR words_query IS NOT NULL;
BEGIN
    IF n IS NULL OR n < 1 OR n > 1000 THEN
        RAISE EXCEPTION 'imgsearch: n must be between 1 and 1000, got %', n USING ERRCODE = '22023';
    END IF;
    IF max_price < 0 OR max_price = 'NaN' THEN
        RAISE EXCEPTION 'imgsearch: a price limit must be a number >= 0' USING ERRCODE = '22023';
    END IF;
    BEGIN
        probes := nullif(current_setting('imgsearch.scan_probes', true), '')::integer;
    EXCEPTION WHEN invalid_text_representation OR numeric_value_out_of_range THEN
        probes := -1;
    END;
    IF probes < 0 THEN
        RAISE EXCEPTION 'imgsearch: imgsearch.scan_probes must be a whole number >= 0, got %',
            current_setting('imgsearch.scan_probes', true) USING ERRCODE = '22023';
    END IF;
    SELECT o.option_value::integer INTO lists
    FROM pg_index x
    JOIN pg_class c ON c.oid = x.indexrelid
    CROSS JOIN LATERAL pg_options_to_table(c.reloptions) o
    WHERE x.indexrelid = to_regclass('ix_product_images_scan') AND x.indisvalid AND o.option_name = 'lists';
    IF lists IS NULL OR probes = 0 OR imgsearch_search_space() IS NOT NULL THEN
        RETURN;
    END IF;
    probes := least(coalesce(probes, greatest(round(2 * sqrt(lists))::integer, 1)), lists);
    target := l2_normalize(query::halfvec(512))::halfvec(512);
    PERFORM set_config('ivfflat.probes', probes::text, true);
    LOOP
    WITH near AS MATERIALIZED (
        -- The index's order (half precision); a product is placed by its first photo in it.
        SELECT i.product_id, row_number() OVER () AS place
        FROM (
            SELECT i.product_id
            FROM product_images i
            ORDER BY l2_normalize(i.embedding::halfvec(512))::halfvec(512) <-> target
            LIMIT photo_limit
        ) i
    ), kept AS (
        SELECT p.id, p.sku::text AS sku
        FROM (SELECT near.product_id, min(near.place) AS place FROM near GROUP BY near.product_id) f
        JOIN products p ON p.id = f.product_id
        WHERE (p.in_stock OR NOT only_in_stock)
          AND (max_price IS NULL OR p.price <= max_price)
          AND (categories IS NULL OR p.category = ANY(categories))
          AND (exclude_skus IS NULL OR p.sku <> ALL(exclude_skus))
          AND (attribute_filter IS NULL OR p.attributes @@ attribute_filter)
          AND (words_query IS NULL OR p.words @@ words_query)
        ORDER BY f.place
        LIMIT n
    ), ranked AS (
        -- The exact distance of each product's nearest photo, and that photo.
        SELECT kept.id, kept.sku, nearest.image, nearest.distance
        FROM kept
        CROSS JOIN LATERAL (
            SELECT nullif(d.image, '') AS image, d.embedding <=> query AS distance
            FROM product_images d WHERE d.product_id = kept.id
            ORDER BY 2, d.position, d.id LIMIT 1
        ) nearest
    )
    SELECT array_agg(b.id ORDER BY b.distance, b.sku), array_agg(b.distance ORDER BY b.distance, b.sku),
           array_agg(b.image ORDER BY b.distance, b.sku)
    INTO best_ids, best_distances, best_images
    FROM ranked b;
    -- Under filters that left fewer than n, once more over ten times the photos.
    EXIT WHEN coalesce(cardinality(best_ids), 0) >= n OR NOT narrowed OR photo_limit > 4 * n;
    photo_limit := 40 * n;
    END LOOP;
    PERFORM set_config('ivfflat.probes', coalesce(previous, '1'), true);
    IF best_ids IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
    SELECT b.rank, p.sku::text, p.name, p.category, p.price, p.in_stock, b.image, b.distance,
           i.image, f.width, f.height, f.points, f.descriptors
    FROM unnest(best_ids, best_distances, best_images) WITH ORDINALITY AS b(id, distance, image, rank)
    JOIN products p ON p.id = b.id
    JOIN product_images i ON i.product_id = b.id
    LEFT JOIN photo_features f ON f.image_id = i.id AND f.extractor = imgsearch_scan_candidates.extractor
    ORDER BY b.rank, i.position, i.id;
END
$fn$;

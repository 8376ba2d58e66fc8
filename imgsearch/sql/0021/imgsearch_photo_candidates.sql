-- Everything a verified photo search reads from the database, in one round trip (imgsearch/query.py
-- search_verified): the check that the query vector comes from the catalogue's embedding space, then the n
-- products nearest to it (source 'global', by distance), then the word_n products sharing the most visual words
-- with the photo among the others (imgsearch_word_candidates: source 'words', by their own rank). Each product
-- comes with every one of its photos and their local features.
--
-- The n nearest are the nearest of two searches: the HNSW walk (imgsearch_verification_candidates: exactly n
-- whenever n products match the filters) and the photos' IVF index (imgsearch_scan_candidates), which reaches
-- the products a walk misses when the photo is unlike the catalogue's (a shopper's phone photo among many
-- look-alike products). Both distances are exact, so the merged ranking is by distance.
--
-- model, weights_id, preprocessing: the space the caller's vector comes from. Another one than the catalogue's
-- raises SQLSTATE IS001 (distances between spaces mean nothing); NULL: not checked. words, vocabulary: the
-- photo's visual words and the vocabulary they were assigned with (NULL: the caller knows of none); a vocabulary
-- replaced, or built, since raises SQLSTATE 55000 and the caller assigns the words again.
CREATE OR REPLACE FUNCTION imgsearch_photo_candidates(
    query vector,
    n integer,
    extractor text,
    words integer[],
    word_n integer,
    vocabulary integer,
    model text,
    weights_id text,
    preprocessing text,
    categories text[] DEFAULT NULL,
    in_stock_only boolean DEFAULT true,
    max_price numeric DEFAULT NULL,
    exclude_skus text[] DEFAULT NULL,
    filters jsonb DEFAULT NULL
) RETURNS TABLE (
    source text, rank bigint, sku text, name text, category text, price numeric, in_stock boolean, image text,
    distance double precision, photo text, width integer, height integer, points bytea, descriptors bytea
)
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    stored record;
BEGIN
    SELECT s.model_name, s.weights_id, s.preprocessing_version INTO stored FROM embedding_space s;
    IF FOUND AND model IS NOT NULL AND (stored.model_name, stored.weights_id, stored.preprocessing_version)
                 IS DISTINCT FROM (model, weights_id, preprocessing) THEN
        RAISE EXCEPTION 'imgsearch: the catalogue was built with a different embedding space: model % (catalogue) vs % (now), weights % vs %, preprocessing % vs %. Vectors of different spaces cannot be compared: re-ingest the catalogue into a new database (or after `imgsearch db reset`) with the current settings',
            stored.model_name, model, left(stored.weights_id, 16), left(weights_id, 16),
            stored.preprocessing_version, preprocessing
            USING ERRCODE = 'IS001';
    END IF;
    IF words IS NULL AND EXISTS (
        SELECT 1 FROM visual_vocabularies v WHERE v.active AND v.extractor = imgsearch_photo_candidates.extractor
    ) THEN
        -- The caller knew of no vocabulary, but one has been built since: it assigns the photo's words and asks again.
        RAISE EXCEPTION 'imgsearch: visual vocabulary (none) is no longer the active one' USING ERRCODE = '55000';
    END IF;
    RETURN QUERY
    WITH walk AS MATERIALIZED (
        SELECT * FROM imgsearch_verification_candidates(query, n, extractor, categories, in_stock_only, max_price,
                                                        exclude_skus, filters) WITH ORDINALITY AS w
    ), scan AS MATERIALIZED (
        SELECT * FROM imgsearch_scan_candidates(query, n, extractor, categories, in_stock_only, max_price,
                                                exclude_skus, filters) WITH ORDINALITY AS s
    ), found AS (
        SELECT w.* FROM walk w
        UNION ALL
        SELECT s.* FROM scan s WHERE NOT EXISTS (SELECT 1 FROM walk w WHERE w.sku = s.sku)
    ), ranks AS (
        SELECT f.sku, row_number() OVER (ORDER BY min(f.distance), f.sku) AS place
        FROM found f GROUP BY f.sku ORDER BY min(f.distance), f.sku LIMIT n
    ), g AS (
        SELECT r.place, f.sku, f.name, f.category, f.price, f.in_stock, f.image, f.distance, f.photo, f.width,
               f.height, f.points, f.descriptors, f.ordinality
        FROM found f JOIN ranks r ON r.sku = f.sku
    )
    SELECT 'global'::text, g.place, g.sku, g.name, g.category, g.price, g.in_stock, g.image, g.distance, g.photo,
           g.width, g.height, g.points, g.descriptors
    FROM (SELECT * FROM g ORDER BY g.place, g.ordinality) g
    UNION ALL
    SELECT 'words'::text, w.*
    FROM imgsearch_word_candidates(
        words, greatest(word_n, 1), extractor, categories, in_stock_only, max_price,
        coalesce(exclude_skus, '{}') || ARRAY(SELECT DISTINCT g.sku FROM g), vocabulary, query, filters
    ) w
    WHERE words IS NOT NULL AND word_n > 0;
END
$fn$;

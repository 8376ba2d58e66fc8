-- The candidates a verified photo search gets from visual words (imgsearch/visual_words.py), in one round trip:
-- the n products whose photos share the most query words under the filters, with every one of their photos and
-- its local features (the columns of imgsearch_verification_candidates; distance is the cosine distance of the
-- product's nearest photo to the raw query vector when one is given, else NULL: it played no part in the rank). A photo scores the sum of idf^2 over the words it shares, idf = ln(photos / photos with the
-- word) counted from the postings read, divided by the square root of its own word count (so that photos with
-- many keypoints do not win by number alone); a product scores its best photo. rank 1 = most shared words.
--
-- words: the query photo's distinct words under the active vocabulary of this extractor. vocabulary, when given,
-- must be that vocabulary's id (else SQLSTATE 55000: the caller assigned its words with one that has since been
-- replaced, and assigns them again). No active vocabulary, or no words: no rows.
CREATE OR REPLACE FUNCTION imgsearch_word_candidates(
    words integer[],
    n integer,
    extractor text,
    categories text[] DEFAULT NULL,
    in_stock_only boolean DEFAULT true,
    max_price numeric DEFAULT NULL,
    exclude_skus text[] DEFAULT NULL,
    vocabulary integer DEFAULT NULL,
    query vector DEFAULT NULL
) RETURNS TABLE (
    rank bigint, sku text, name text, category text, price numeric, in_stock boolean, image text,
    distance double precision, photo text, width integer, height integer, points bytea, descriptors bytea
)
LANGUAGE plpgsql STABLE
SET search_path FROM CURRENT
AS $fn$
#variable_conflict use_column
DECLARE
    active_id integer;
    photos double precision;
    only_in_stock boolean := coalesce(in_stock_only, true);
BEGIN
    IF n IS NULL OR n < 1 OR n > 1000 THEN
        RAISE EXCEPTION 'imgsearch: n must be between 1 and 1000, got %', n USING ERRCODE = '22023';
    END IF;
    IF max_price < 0 OR max_price = 'NaN' THEN
        RAISE EXCEPTION 'imgsearch: a price limit must be a number >= 0' USING ERRCODE = '22023';
    END IF;
    -- The number of photos indexed, for the idf: the planner's estimate, never below what the vocabulary saw.
    SELECT v.id, greatest(v.photos, c.reltuples, 1) INTO active_id, photos
    FROM visual_vocabularies v, pg_class c
    WHERE v.active AND v.extractor = imgsearch_word_candidates.extractor
      AND c.oid = 'visual_word_photos'::regclass;
    IF vocabulary IS NOT NULL AND active_id IS DISTINCT FROM vocabulary THEN
        RAISE EXCEPTION 'imgsearch: visual vocabulary % is no longer the active one', vocabulary
            USING ERRCODE = '55000';
    END IF;
    IF active_id IS NULL OR words IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH postings AS (
        -- Index-only scan of the primary key, word by word: each word's photos, and so its document frequency.
        SELECT p.word, array_agg(p.image_id) AS ids
        FROM visual_word_postings p
        WHERE p.vocabulary_id = active_id AND p.word = ANY(words)
        GROUP BY p.word
    ), photo_scores AS (
        SELECT u.image_id, sum(power(ln(greatest(photos, cardinality(g.ids)) / cardinality(g.ids)), 2)) AS score
        FROM postings g CROSS JOIN LATERAL unnest(g.ids) AS u(image_id)
        GROUP BY u.image_id
    ), product_scores AS (
        SELECT DISTINCT ON (p.id) p.id, p.sku::text AS sku, p.name, p.category, p.price, p.in_stock,
               nullif(i.image, '') AS image, s.score / sqrt(w.words) AS score
        FROM photo_scores s
        JOIN visual_word_photos w ON w.image_id = s.image_id AND w.vocabulary_id = active_id
        JOIN product_images i ON i.id = s.image_id
        JOIN products p ON p.id = i.product_id
        WHERE (p.in_stock OR NOT only_in_stock)
          AND (max_price IS NULL OR p.price <= max_price)
          AND (categories IS NULL OR p.category = ANY(categories))
          AND (exclude_skus IS NULL OR p.sku <> ALL(exclude_skus))
        ORDER BY p.id, s.score / sqrt(w.words) DESC, i.position, i.id
    ), best AS (
        SELECT row_number() OVER (ORDER BY b.score DESC, b.sku) AS rank, b.*
        FROM (SELECT * FROM product_scores ORDER BY score DESC, sku LIMIT n) b
    )
    SELECT b.rank, b.sku, b.name, b.category, b.price, b.in_stock, b.image,
           (SELECT min(d.embedding <=> query) FROM product_images d WHERE d.product_id = b.id),
           i.image, f.width, f.height, f.points, f.descriptors
    FROM best b
    JOIN product_images i ON i.product_id = b.id
    LEFT JOIN photo_features f ON f.image_id = i.id AND f.extractor = imgsearch_word_candidates.extractor
    ORDER BY b.rank, i.position, i.id;
END
$fn$;

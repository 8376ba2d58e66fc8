-- The candidates a verified photo search gets from visual words (imgsearch/visual_words.py), in one round trip:
-- the n products whose photos share the most query words under the filters, with every one of their photos and
-- its local features (the columns of imgsearch_verification_candidates; distance is the cosine distance of the
-- product's nearest photo to the raw query vector when one is given, else NULL: it played no part in the rank).
-- A photo scores the sum of idf^2 over the words it shares, idf = ln(photos / photos with the word), divided by
-- the square root of its own word count (so that photos with many keypoints do not win by number alone); a
-- product scores its best photo. rank 1 = most shared words.
--
-- words: the query photo's distinct words under the active vocabulary of this extractor. vocabulary, when given,
-- must be that vocabulary's id (else SQLSTATE 55000: the caller assigned its words with one that has since been
-- replaced, and assigns them again). No active vocabulary, or no words: no rows.
--
-- The photos with each word are those counted when the vocabulary was activated (visual_word_frequencies), scaled
-- up by the photos indexed since: the idf comes from them. Products are looked up for the best-scoring photos
-- only (8n, at least 400), and for every scored photo only when those hold fewer than n products under the
-- filters. Every posting of every word is read unless the setting imgsearch.word_postings (default 0: no limit)
-- caps them: then words are read rarest first while the postings before them stay under it (the first word
-- always), which bounds the cost of a large catalogue's search at some loss of recall (docs/quality.md).
CREATE OR REPLACE FUNCTION imgsearch_word_candidates(
    words integer[],
    n integer,
    extractor text,
    categories text[] DEFAULT NULL,
    in_stock_only boolean DEFAULT true,
    max_price numeric DEFAULT NULL,
    exclude_skus text[] DEFAULT NULL,
    vocabulary integer DEFAULT NULL,
    query vector DEFAULT NULL,
    filters jsonb DEFAULT NULL
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
    growth double precision;
    budget bigint;
    chosen integer[];
    weights double precision[];
    photo_limit integer;
    best_ids bigint[];
    best_images text[];
    only_in_stock boolean := coalesce(in_stock_only, true);
    attribute_filter jsonpath := imgsearch_attribute_filter(filters);
    words_query tsquery := imgsearch_words_query(nullif(current_setting('imgsearch.words', true), ''));
BEGIN
    IF n IS NULL OR n < 1 OR n > 1000 THEN
        RAISE EXCEPTION 'imgsearch: n must be between 1 and 1000, got %', n USING ERRCODE = '22023';
    END IF;
    IF max_price < 0 OR max_price = 'NaN' THEN
        RAISE EXCEPTION 'imgsearch: a price limit must be a number >= 0' USING ERRCODE = '22023';
    END IF;
    -- The number of photos indexed (the planner's estimate, never below what the vocabulary saw), and how many
    -- times the photos counted it has grown since.
    SELECT v.id, greatest(v.photos, c.reltuples, 1), greatest(c.reltuples / greatest(v.photos, 1), 1)
    INTO active_id, photos, growth
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
    BEGIN
        budget := coalesce(nullif(current_setting('imgsearch.word_postings', true), ''), '0')::bigint;
    EXCEPTION WHEN invalid_text_representation OR numeric_value_out_of_range THEN
        budget := -1;
    END;
    IF budget < 0 THEN
        RAISE EXCEPTION 'imgsearch: imgsearch.word_postings must be a whole number >= 0, got %',
            current_setting('imgsearch.word_postings', true) USING ERRCODE = '22023';
    END IF;
    -- The words read, rarest first while the postings estimated before each stay under a budget (a word not
    -- counted, which no photo had then, is the rarest of all), and their weights idf^2.
    SELECT array_agg(r.word), array_agg(power(ln(greatest(photos, r.df) / r.df), 2))
    INTO chosen, weights
    FROM (
        SELECT q.word, greatest(coalesce(f.photos, 0) * growth, 1) AS df,
               sum(coalesce(f.photos, 0) * growth)
                   OVER (ORDER BY coalesce(f.photos, 0), q.word ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
                   AS before
        FROM (SELECT DISTINCT u.word FROM unnest(words) AS u(word) WHERE u.word IS NOT NULL) q
        LEFT JOIN visual_word_frequencies f ON f.vocabulary_id = active_id AND f.word = q.word
    ) r
    WHERE budget = 0 OR coalesce(r.before, 0) < budget;
    IF chosen IS NULL THEN
        RETURN;
    END IF;
    photo_limit := greatest(8 * n, 400);
    LOOP
        WITH photo_scores AS (
            -- Index-only scans of the postings' primary key, word by word.
            SELECT p.image_id, sum(q.weight) AS score
            FROM unnest(chosen, weights) AS q(word, weight)
            JOIN visual_word_postings p ON p.vocabulary_id = active_id AND p.word = q.word
            GROUP BY p.image_id
        ), top_photos AS (
            SELECT s.image_id, s.score / sqrt(w.words) AS score
            FROM photo_scores s
            JOIN visual_word_photos w ON w.image_id = s.image_id AND w.vocabulary_id = active_id
            ORDER BY 2 DESC, s.image_id
            LIMIT photo_limit
        ), product_scores AS (
            SELECT DISTINCT ON (p.id) p.id, p.sku::text AS sku, nullif(i.image, '') AS image, s.score
            FROM top_photos s
            JOIN product_images i ON i.id = s.image_id
            JOIN products p ON p.id = i.product_id
            WHERE (p.in_stock OR NOT only_in_stock)
              AND (max_price IS NULL OR p.price <= max_price)
              AND (categories IS NULL OR p.category = ANY(categories))
              AND (exclude_skus IS NULL OR p.sku <> ALL(exclude_skus))
              AND (attribute_filter IS NULL OR p.attributes @@ attribute_filter)
              AND (words_query IS NULL OR p.words @@ words_query)
            ORDER BY p.id, s.score DESC, i.position, i.id
        )
        SELECT array_agg(b.id ORDER BY b.score DESC, b.sku), array_agg(b.image ORDER BY b.score DESC, b.sku)
        INTO best_ids, best_images
        FROM (SELECT * FROM product_scores ORDER BY score DESC, sku LIMIT n) b;
        -- The best photos held n products, or every scored photo was looked at.
        EXIT WHEN coalesce(cardinality(best_ids), 0) >= n OR photo_limit IS NULL;
        photo_limit := NULL;
    END LOOP;
    IF best_ids IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
    SELECT b.rank, p.sku::text, p.name, p.category, p.price, p.in_stock, b.image,
           (SELECT min(d.embedding <=> query) FROM product_images d WHERE d.product_id = b.id),
           i.image, f.width, f.height, f.points, f.descriptors
    FROM unnest(best_ids, best_images) WITH ORDINALITY AS b(id, image, rank)
    JOIN products p ON p.id = b.id
    JOIN product_images i ON i.product_id = b.id
    LEFT JOIN photo_features f ON f.image_id = i.id AND f.extractor = imgsearch_word_candidates.extractor
    ORDER BY b.rank, i.position, i.id;
END
$fn$;

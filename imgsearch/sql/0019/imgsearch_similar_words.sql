-- A search by vectors and words at once: the visual ranking (imgsearch_similar_multi) and the words' ranking
-- fused by reciprocal rank fusion, score = (1 - w) / (60 + visual rank) + w / (60 + words rank), w = text_weight
-- (NULL: 0.5, chosen by measurement on Myntra queries, benchmarks/results/words.md). The candidates are the first
-- max(100, 2k) products of each ranking (imgsearch_search_words for the words) under the same filters. A
-- candidate's words rank is the dense rank of its ts_rank_cd among the candidates that match the words, so products
-- the words score alike rank alike (words such as "men", which half the catalogue matches equally, then act as a
-- preference among the photo's neighbours instead of a ranking by SKU); a candidate not matching them, or missing
-- from the visual ranking, gets nothing from that ranking. Every result carries its exact distance to the nearest query vector (over all its
-- photos), whichever ranking found it. The words only rank here: to keep only products matching them, set
-- imgsearch.words (every search filters on it) and search by vector.
CREATE OR REPLACE FUNCTION imgsearch_similar_words(
    queries vector[],
    words text,
    k integer DEFAULT 10,
    categories text[] DEFAULT NULL,
    in_stock_only boolean DEFAULT true,
    max_price numeric DEFAULT NULL,
    exclude_skus text[] DEFAULT NULL,
    filters jsonb DEFAULT NULL,
    text_weight double precision DEFAULT NULL
) RETURNS TABLE (
    sku text, name text, category text, price numeric, in_stock boolean, image text, distance double precision
)
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $fn$
#variable_conflict use_column
DECLARE
    w double precision := coalesce(text_weight, 0.5);
    words_query tsquery := imgsearch_words_query(words);
    depth integer;
    space integer := imgsearch_search_space();
    projected vector[];
BEGIN
    IF words_query IS NULL THEN
        RAISE EXCEPTION 'imgsearch: give the words to search for' USING ERRCODE = '22023';
    END IF;
    IF k IS NULL OR k < 1 OR k > 1000 THEN
        RAISE EXCEPTION 'imgsearch: k must be between 1 and 1000, got %', k USING ERRCODE = '22023';
    END IF;
    IF w IS NULL OR w < 0 OR w > 1 OR w = 'NaN' THEN
        RAISE EXCEPTION 'imgsearch: text_weight must be a number from 0 to 1' USING ERRCODE = '22023';
    END IF;
    depth := least(1000, greatest(100, 2 * k));
    -- The vectors as the visual ranking compares them (checked there), for the products only the words found.
    SELECT array_agg(CASE WHEN space IS NULL THEN l2_normalize(x) ELSE imgsearch_project(l2_normalize(x), space) END)
    INTO projected FROM unnest(queries) x WHERE x IS NOT NULL AND vector_norm(x) > 0;
    RETURN QUERY
    WITH visual AS MATERIALIZED (
        SELECT v.*, row_number() OVER () AS r
        FROM imgsearch_similar_multi(
            queries, depth, categories, in_stock_only, max_price, exclude_skus, NULL, filters) v
    ), textual AS MATERIALIZED (
        SELECT t.sku
        FROM imgsearch_search_words(words, depth, categories, in_stock_only, max_price, exclude_skus, filters) t
    ), scored AS (
        SELECT c.sku, p.words @@ words_query AS matches, ts_rank_cd(p.words, words_query) AS text_score
        FROM (SELECT v.sku FROM visual v UNION SELECT t.sku FROM textual t) c
        JOIN products p ON p.sku = c.sku
    ), ranked AS (
        SELECT s.sku, CASE WHEN s.matches THEN dense_rank() OVER (PARTITION BY s.matches ORDER BY s.text_score DESC)
                      END AS r
        FROM scored s
    ), fused AS (
        SELECT t.sku, coalesce((1 - w) / (60 + v.r), 0) + coalesce(w / (60 + t.r), 0) AS score, v.image, v.distance
        FROM ranked t LEFT JOIN visual v ON v.sku = t.sku
        ORDER BY 2 DESC, 1
        LIMIT k
    )
    SELECT p.sku::text, p.name, p.category, p.price, p.in_stock, coalesce(f.image, nullif(b.image, '')),
           coalesce(f.distance, b.d)
    FROM fused f
    JOIN products p ON p.sku = f.sku
    LEFT JOIN LATERAL (
        SELECT i.image, (SELECT min(s.embedding <=> q) FROM unnest(projected) q)::double precision AS d
        FROM product_images i
        JOIN LATERAL (SELECT CASE WHEN space IS NULL THEN i.embedding ELSE (
            SELECT t.embedding FROM tuned_images t WHERE t.image_id = i.id) END AS embedding) s ON true
        WHERE i.product_id = p.id AND f.distance IS NULL
        ORDER BY 2, i.position LIMIT 1
    ) b ON true
    ORDER BY f.score DESC, f.sku;
END
$fn$;

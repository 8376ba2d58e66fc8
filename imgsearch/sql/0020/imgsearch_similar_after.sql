-- The page after a given result of a vector search, however deep: the k products nearest to the query vectors
-- (as imgsearch_similar_multi measures them: each product by its photo nearest to any of them) that come after
-- (after_distance, after_sku) in the order (distance rounded to 9 decimals, SKU), under the same filters
-- (categories, stock, price, exclusions, attribute filters, the setting imgsearch.words, the search space). For
-- pages past the 1000th result, which a search's k cannot reach: a result's cursor says where its page ended.
-- The matching products are ranked exactly (every one of them is measured), so a deep page costs what an exact
-- search of the filter costs: docs/filtered-search.md.
CREATE OR REPLACE FUNCTION imgsearch_similar_after(
    queries vector[],
    after_distance double precision,
    after_sku text,
    k integer DEFAULT 10,
    categories text[] DEFAULT NULL,
    in_stock_only boolean DEFAULT true,
    max_price numeric DEFAULT NULL,
    exclude_skus text[] DEFAULT NULL,
    filters jsonb DEFAULT NULL
) RETURNS TABLE (
    sku text, name text, category text, price numeric, in_stock boolean, image text, distance double precision
)
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $fn$
#variable_conflict use_column
DECLARE
    space integer := imgsearch_search_space();
    attribute_filter jsonpath := imgsearch_attribute_filter(filters);
    words_query tsquery := imgsearch_words_query(nullif(current_setting('imgsearch.words', true), ''));
    only_in_stock boolean := coalesce(in_stock_only, true);
    after_key numeric := round(after_distance::numeric, 9);
    q vector;
BEGIN
    IF queries IS NULL OR cardinality(queries) = 0 OR cardinality(queries) > 100 OR array_position(queries, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'imgsearch: give 1 to 100 query vectors, none of them NULL' USING ERRCODE = '22023';
    END IF;
    FOREACH q IN ARRAY queries LOOP
        IF vector_dims(q) <> 512 OR vector_norm(q) = 0 THEN
            RAISE EXCEPTION 'imgsearch: a query vector must have 512 dimensions and a direction' USING ERRCODE = '22023';
        END IF;
    END LOOP;
    IF after_distance IS NULL OR after_distance = 'NaN' OR after_sku IS NULL THEN
        RAISE EXCEPTION 'imgsearch: give the distance and SKU of the result the page comes after'
            USING ERRCODE = '22023';
    END IF;
    IF k IS NULL OR k < 1 OR k > 1000 THEN
        RAISE EXCEPTION 'imgsearch: k must be between 1 and 1000, got %', k USING ERRCODE = '22023';
    END IF;
    IF max_price < 0 OR max_price = 'NaN' THEN
        RAISE EXCEPTION 'imgsearch: a price limit must be a number >= 0' USING ERRCODE = '22023';
    END IF;
    SELECT array_agg(CASE WHEN space IS NULL THEN l2_normalize(x) ELSE imgsearch_project(l2_normalize(x), space) END)
    INTO queries FROM unnest(queries) x;
    RETURN QUERY
    SELECT r.sku, r.name, r.category, r.price, r.in_stock, r.image, r.d
    FROM (
        SELECT p.sku::text AS sku, p.name, p.category, p.price, p.in_stock, nullif(i.image, '') AS image, b.d
        FROM products p
        CROSS JOIN LATERAL (
            SELECT s.image_id, (SELECT min(s.embedding <=> x) FROM unnest(queries) x)::double precision AS d
            FROM (SELECT pi.id AS image_id, pi.embedding, pi.position FROM product_images pi
                  WHERE space IS NULL AND pi.product_id = p.id
                  UNION ALL
                  SELECT t.image_id, t.embedding, pi.position FROM tuned_images t
                  JOIN product_images pi ON pi.id = t.image_id
                  WHERE space IS NOT NULL AND t.product_id = p.id) s
            ORDER BY 2, s.position LIMIT 1
        ) b
        JOIN product_images i ON i.id = b.image_id
        WHERE (p.in_stock OR NOT only_in_stock)
          AND (max_price IS NULL OR p.price <= max_price)
          AND (categories IS NULL OR p.category = ANY(categories))
          AND (exclude_skus IS NULL OR p.sku <> ALL(exclude_skus))
          AND (attribute_filter IS NULL OR p.attributes @@ attribute_filter)
          AND (words_query IS NULL OR p.words @@ words_query)
    ) r
    WHERE (round(r.d::numeric, 9), r.sku) > (after_key, after_sku)
    ORDER BY round(r.d::numeric, 9), r.sku
    LIMIT k;
END
$fn$;

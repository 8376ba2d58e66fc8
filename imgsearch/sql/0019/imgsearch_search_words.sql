-- The k products whose words (imgsearch_product_words) best match a search's words, under the filters of
-- imgsearch_similar: a search by words alone, with no photo. Ranked by ts_rank_cd (the words' weights: name over
-- category and attributes over description; cover density), then SKU; distance is NULL (no vector was given).
-- Every matching product is ranked (the GIN index ix_products_words finds them), so words that match a large part
-- of the catalogue cost more: benchmarks/results/attributes-200k.md.
CREATE OR REPLACE FUNCTION imgsearch_search_words(
    words text,
    k integer DEFAULT 10,
    categories text[] DEFAULT NULL,
    in_stock_only boolean DEFAULT true,
    max_price numeric DEFAULT NULL,
    exclude_skus text[] DEFAULT NULL,
    filters jsonb DEFAULT NULL
) RETURNS TABLE (
    sku text, name text, category text, price numeric, in_stock boolean, image text, distance double precision
)
LANGUAGE plpgsql STABLE
SET search_path FROM CURRENT
AS $fn$
#variable_conflict use_column
DECLARE
    words_query tsquery := imgsearch_words_query(words);
    attribute_filter jsonpath := imgsearch_attribute_filter(filters);
    only_in_stock boolean := coalesce(in_stock_only, true);
BEGIN
    IF words_query IS NULL THEN
        RAISE EXCEPTION 'imgsearch: give the words to search for' USING ERRCODE = '22023';
    END IF;
    IF k IS NULL OR k < 1 OR k > 1000 THEN
        RAISE EXCEPTION 'imgsearch: k must be between 1 and 1000, got %', k USING ERRCODE = '22023';
    END IF;
    IF max_price < 0 OR max_price = 'NaN' THEN
        RAISE EXCEPTION 'imgsearch: a price limit must be a number >= 0' USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
    SELECT p.sku::text, p.name, p.category, p.price, p.in_stock,
           (SELECT nullif(i.image, '') FROM product_images i WHERE i.product_id = p.id ORDER BY i.position, i.id
            LIMIT 1),
           NULL::double precision
    FROM products p
    WHERE p.words @@ words_query
      AND (p.in_stock OR NOT only_in_stock)
      AND (max_price IS NULL OR p.price <= max_price)
      AND (categories IS NULL OR p.category = ANY(categories))
      AND (exclude_skus IS NULL OR p.sku <> ALL(exclude_skus))
      AND (attribute_filter IS NULL OR p.attributes @@ attribute_filter)
    ORDER BY ts_rank_cd(p.words, words_query) DESC, p.sku
    LIMIT k;
END
$fn$;

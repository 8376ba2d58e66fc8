-- The k products nearest to a query vector under filters; every search goes through it.
-- Design notes are in docs/filtered-search.md. In short: pgvector's HNSW scan applies the WHERE clause after
-- walking the graph, so a selective filter starves it. A bounded count decides: filters matching fewer than
-- `imgsearch.exact_search_below` rows (default 1000) are answered by exact search over just those rows (cheap,
-- via the b-tree indexes); broader ones by an iterative HNSW scan, and if that still finds fewer than k rows
-- within hnsw.max_scan_tuples (everything near the query is filtered out), by exact search. Relaxed iterative
-- scans return rows slightly out of order, so the index walk collects ef_search filtered candidates and the
-- best k of them are returned in exact order. Filter fragments are fixed strings; every value is bound with
-- USING. The session settings imgsearch.exact_search_below, imgsearch.ef_search, imgsearch.max_scan_tuples
-- tune it and imgsearch.exact_search = on forces exact search (to measure recall).
-- SET search_path FROM CURRENT pins the function to the schema it was created in (the migration's
-- search_path: imgsearch's schema, then the vector extension's), whatever the caller's search_path is.
CREATE OR REPLACE FUNCTION imgsearch_similar(
    query vector,
    k integer DEFAULT 10,
    categories text[] DEFAULT NULL,
    in_stock_only boolean DEFAULT true,
    max_price numeric DEFAULT NULL,
    exclude_skus text[] DEFAULT NULL,
    below_price numeric DEFAULT NULL
) RETURNS TABLE (
    sku text, name text, category text, price numeric, in_stock boolean, image text, distance double precision
)
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
SET hnsw.iterative_scan = 'relaxed_order'
SET hnsw.ef_search = '100'
SET hnsw.max_scan_tuples = '50000'
AS $fn$
#variable_conflict use_column
DECLARE
    exact_below integer := coalesce(
        nullif(current_setting('imgsearch.exact_search_below', true), '')::integer, 1000);
    where_sql text := 'WHERE true';
    columns_sql constant text :=
        'SELECT p.sku::text, p.name, p.category, p.price, p.in_stock, p.image, '
        '(p.embedding <=> $1)::double precision FROM products p ';
    matches bigint;
    found_ids bigint[];
    sort_setting text;
    ef integer;
BEGIN
    IF query IS NULL THEN
        RAISE EXCEPTION 'imgsearch: the query vector is NULL' USING ERRCODE = '22023';
    END IF;
    IF vector_dims(query) <> 512 THEN
        RAISE EXCEPTION 'imgsearch: the query vector has % dimensions, the catalogue stores 512',
            vector_dims(query) USING ERRCODE = '22023';
    END IF;
    -- Cosine distance ignores length, so the query is scaled to length 1 (computed in double precision by
    -- pgvector): vectors such as [1e38, ...] or [1e-45, 0, ...] would otherwise give NaN distances.
    IF vector_norm(query) = 0 THEN
        RAISE EXCEPTION 'imgsearch: the query vector is all zeros (no direction)' USING ERRCODE = '22023';
    END IF;
    query := l2_normalize(query);
    IF vector_norm(query) = 0 OR vector_norm(query) = 'NaN'::float8 THEN
        RAISE EXCEPTION 'imgsearch: the query vector has no usable direction' USING ERRCODE = '22023';
    END IF;
    IF k IS NULL OR k < 1 OR k > 1000 THEN
        RAISE EXCEPTION 'imgsearch: k must be between 1 and 1000, got %', k USING ERRCODE = '22023';
    END IF;
    -- NaN sorts above every number in PostgreSQL: "price <= NaN" would silently mean no limit at all.
    IF max_price < 0 OR below_price < 0 OR max_price = 'NaN' OR below_price = 'NaN' THEN
        RAISE EXCEPTION 'imgsearch: a price limit must be a number >= 0' USING ERRCODE = '22023';
    END IF;

    IF categories IS NOT NULL THEN where_sql := where_sql || ' AND p.category = ANY($2)'; END IF;
    IF coalesce(in_stock_only, true) THEN where_sql := where_sql || ' AND p.in_stock'; END IF;
    IF max_price IS NOT NULL THEN where_sql := where_sql || ' AND p.price <= $3'; END IF;
    IF below_price IS NOT NULL THEN where_sql := where_sql || ' AND p.price < $4'; END IF;
    IF exclude_skus IS NOT NULL THEN where_sql := where_sql || ' AND p.sku <> ALL($5)'; END IF;

    IF current_setting('imgsearch.exact_search', true) = 'on' THEN
        RETURN QUERY EXECUTE columns_sql || where_sql || ' ORDER BY (p.embedding <=> $1) + 0, p.sku LIMIT $6'
            USING query, categories, max_price, below_price, exclude_skus, k;
        RETURN;
    END IF;

    IF where_sql <> 'WHERE true' THEN
        EXECUTE 'SELECT count(*) FROM (SELECT 1 FROM products p ' || where_sql || ' LIMIT $7) s'
            INTO matches USING query, categories, max_price, below_price, exclude_skus, k, exact_below;
        IF matches < exact_below THEN
            -- "+ 0" hides the distance from the planner's index matching: exact search over matching rows.
            RETURN QUERY EXECUTE columns_sql || where_sql || ' ORDER BY (p.embedding <=> $1) + 0, p.sku LIMIT $6'
                USING query, categories, max_price, below_price, exclude_skus, k;
            RETURN;
        END IF;
    END IF;

    -- Local to this call: the SET clauses above restore the caller's values when the function returns.
    ef := greatest(k, coalesce(nullif(current_setting('imgsearch.ef_search', true), '')::integer, 100));
    PERFORM set_config('hnsw.ef_search', ef::text, true);
    PERFORM set_config('hnsw.max_scan_tuples', coalesce(
        nullif(current_setting('imgsearch.max_scan_tuples', true), '')::integer, 50000)::text, true);
    -- The count said the filter is broad, so walk the index; without this the planner may still prefer to
    -- sort a mid-sized filtered set exactly, which costs O(matches) per query at catalogue scale.
    sort_setting := current_setting('enable_sort');
    PERFORM set_config('enable_sort', 'off', true);
    EXECUTE 'SELECT array_agg(c.id) FROM (SELECT p.id FROM products p ' || where_sql
            || ' ORDER BY p.embedding <=> $1 LIMIT $7) c'
        INTO found_ids USING query, categories, max_price, below_price, exclude_skus, k, ef;
    PERFORM set_config('enable_sort', sort_setting, true);

    IF coalesce(cardinality(found_ids), 0) >= k THEN
        RETURN QUERY EXECUTE columns_sql || 'WHERE p.id = ANY($2) ORDER BY (p.embedding <=> $1) + 0, p.sku LIMIT $3'
            USING query, found_ids, k;
        RETURN;
    END IF;

    -- The index walk ran out of budget before k rows passed the filter, or the catalogue holds fewer than k.
    RETURN QUERY EXECUTE columns_sql || where_sql || ' ORDER BY (p.embedding <=> $1) + 0, p.sku LIMIT $6'
        USING query, categories, max_price, below_price, exclude_skus, k;
END
$fn$;

-- The k products nearest to one or more query vectors under filters: every search goes through it.
-- A product has one or more photos; its distance is the smallest distance between any query vector and any of
-- its photos, and the photo that gave it is returned as the product's image. One row per product, best first;
-- exactly k rows whenever at least k products match the filters.
--
-- Plan (docs/filtered-search.md). pgvector's HNSW scan applies the WHERE clause after walking the graph, so a
-- selective filter starves it. A bounded count of the matching products decides: fewer than
-- imgsearch.exact_search_below (default 1000) are ranked exactly (each product's best photo, via the b-tree on
-- product_images(product_id)); broader filters walk the photos' HNSW index with pgvector's iterative scan,
-- (over the photos' vectors rounded to half precision, as the index holds them: embedding::halfvec(512))
-- once per query vector, collecting about ef_search candidate products (the walk asks for ef_search photos
-- times the catalogue's photos per product, since a product may appear through several photos), then rank
-- those candidates exactly by all their photos. If the walk finds fewer than k products within
-- hnsw.max_scan_tuples (everything near the query is filtered out), it falls back to exact search. Filter
-- fragments are fixed strings; every value is bound with USING. The category filter applies to the photos'
-- own copy of the category, so that a category index (a partial HNSW index WHERE category = ...) serves it.
-- Session settings imgsearch.exact_search_below, imgsearch.ef_search, imgsearch.max_scan_tuples tune it and
-- imgsearch.exact_search = on forces exact search (to measure recall).
--
-- Search space: when a tuned space is active (imgsearch tune), the queries are projected into it
-- (imgsearch_project) and everything above runs on tuned_images, the photos' projected vectors, instead of
-- product_images; callers pass raw VGG16 vectors either way.
CREATE OR REPLACE FUNCTION imgsearch_similar_multi(
    queries vector[],
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
    space integer := imgsearch_active_space();
    -- The searched vectors (s) and their photos (i): one table in the raw space, two in a tuned one.
    photos_from text := 'product_images s JOIN LATERAL (SELECT s.image, s.position) i ON true';
    -- Each product with its best photo for the queries ($1), computed exactly over all its photos.
    ranked_sql text :=
        'SELECT p.sku::text, p.name, p.category, p.price, p.in_stock, nullif(b.image, ''''), b.d '
        'FROM products p CROSS JOIN LATERAL ('
        '  SELECT i.image, (SELECT min(s.embedding <=> q) FROM unnest($1) q)::double precision AS d '
        '  FROM %s WHERE s.product_id = p.id ORDER BY 2, i.position LIMIT 1) b ';
    product_where text := 'WHERE true';
    walk_where text := 'WHERE true';
    own_where text := '';
    walk_from text := 'FROM product_images i ';
    excluded bigint[];
    matches bigint;
    q vector;
    ids bigint[];
    found bigint[] := '{}';
    ef integer;
    per_product double precision;
    walk_limit integer;
    saved_sort text;
    saved_hashjoin text;
    saved_mergejoin text;
BEGIN
    IF queries IS NULL OR cardinality(queries) = 0 OR cardinality(queries) > 100 OR array_position(queries, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'imgsearch: give 1 to 100 query vectors, none of them NULL' USING ERRCODE = '22023';
    END IF;
    FOREACH q IN ARRAY queries LOOP
        IF vector_dims(q) <> 512 THEN
            RAISE EXCEPTION 'imgsearch: the query vector has % dimensions, the catalogue stores 512',
                vector_dims(q) USING ERRCODE = '22023';
        END IF;
        -- Cosine distance ignores length, so queries are scaled to length 1 (in double precision by pgvector):
        -- vectors such as [1e38, ...] or [1e-45, 0, ...] would otherwise give NaN distances.
        IF vector_norm(q) = 0 THEN
            RAISE EXCEPTION 'imgsearch: the query vector is all zeros (no direction)' USING ERRCODE = '22023';
        END IF;
    END LOOP;
    SELECT array_agg(l2_normalize(x)) INTO queries FROM unnest(queries) x;
    IF space IS NOT NULL THEN
        SELECT array_agg(imgsearch_project(x, space)) INTO queries FROM unnest(queries) x;
        photos_from := 'tuned_images s JOIN product_images i ON i.id = s.image_id';
        walk_from := 'FROM tuned_images i ';
    END IF;
    ranked_sql := format(ranked_sql, photos_from);
    IF k IS NULL OR k < 1 OR k > 1000 THEN
        RAISE EXCEPTION 'imgsearch: k must be between 1 and 1000, got %', k USING ERRCODE = '22023';
    END IF;
    -- NaN sorts above every number in PostgreSQL: "price <= NaN" would silently mean no limit at all.
    IF max_price < 0 OR below_price < 0 OR max_price = 'NaN' OR below_price = 'NaN' THEN
        RAISE EXCEPTION 'imgsearch: a price limit must be a number >= 0' USING ERRCODE = '22023';
    END IF;

    -- Filters on the products' own columns (stock, price): the photo walk joins the products only for these.
    IF coalesce(in_stock_only, true) THEN own_where := own_where || ' AND p.in_stock'; END IF;
    IF max_price IS NOT NULL THEN own_where := own_where || ' AND p.price <= $3'; END IF;
    IF below_price IS NOT NULL THEN own_where := own_where || ' AND p.price < $4'; END IF;
    IF own_where <> '' THEN walk_from := walk_from || 'JOIN products p ON p.id = i.product_id '; END IF;
    product_where := product_where || own_where;
    walk_where := walk_where || own_where;
    IF categories IS NOT NULL THEN
        product_where := product_where || ' AND p.category = ANY($2)';
        walk_where := walk_where || ' AND i.category = ANY($2)';
    END IF;
    IF exclude_skus IS NOT NULL THEN
        product_where := product_where || ' AND p.sku <> ALL($5)';
        SELECT array_agg(p.id) INTO excluded FROM products p WHERE p.sku = ANY(exclude_skus);
        IF excluded IS NOT NULL THEN walk_where := walk_where || ' AND i.product_id <> ALL($9)'; END IF;
    END IF;

    IF current_setting('imgsearch.exact_search', true) = 'on' THEN
        RETURN QUERY EXECUTE ranked_sql || product_where || ' ORDER BY b.d, p.sku LIMIT $6'
            USING queries, categories, max_price, below_price, exclude_skus, k;
        RETURN;
    END IF;

    IF product_where <> 'WHERE true' THEN
        EXECUTE 'SELECT count(*) FROM (SELECT 1 FROM products p ' || product_where || ' LIMIT $7) s'
            INTO matches USING queries, categories, max_price, below_price, exclude_skus, k, exact_below;
        IF matches < exact_below THEN
            RETURN QUERY EXECUTE ranked_sql || product_where || ' ORDER BY b.d, p.sku LIMIT $6'
                USING queries, categories, max_price, below_price, exclude_skus, k;
            RETURN;
        END IF;
    END IF;

    -- Local to this call: the SET clauses above restore the caller's values when the function returns.
    ef := greatest(k, coalesce(nullif(current_setting('imgsearch.ef_search', true), '')::integer, 100));
    -- Photos per product, from the planner's statistics (no count): the walk collects ef products' worth of
    -- photos, and the graph search keeps as many candidates.
    SELECT least(10, greatest(1, ci.reltuples / nullif(cp.reltuples, 0))) INTO per_product
    FROM pg_class ci, pg_class cp
    WHERE ci.oid = CASE WHEN space IS NULL THEN 'product_images'::regclass ELSE 'tuned_images'::regclass END
      AND cp.oid = 'products'::regclass;
    walk_limit := ceil(ef * coalesce(per_product, 1));
    PERFORM set_config('hnsw.ef_search', least(walk_limit, 1000)::text, true);
    PERFORM set_config('hnsw.max_scan_tuples', coalesce(
        nullif(current_setting('imgsearch.max_scan_tuples', true), '')::integer, 50000)::text, true);
    -- The count said the filter is broad, so walk the index: without this the planner may still prefer to sort a
    -- mid-sized filtered set exactly (O(matches) per query), or to join the products by hash.
    saved_sort := current_setting('enable_sort');
    saved_hashjoin := current_setting('enable_hashjoin');
    saved_mergejoin := current_setting('enable_mergejoin');
    PERFORM set_config('enable_sort', 'off', true);
    PERFORM set_config('enable_hashjoin', 'off', true);
    PERFORM set_config('enable_mergejoin', 'off', true);
    FOREACH q IN ARRAY queries LOOP
        EXECUTE 'SELECT array_agg(c.product_id) FROM (SELECT i.product_id ' || walk_from || walk_where
                || ' ORDER BY i.embedding::halfvec(512) <=> $8::halfvec(512) LIMIT $7) c'
            INTO ids USING queries, categories, max_price, below_price, exclude_skus, k, walk_limit, q, excluded;
        found := found || coalesce(ids, '{}');
    END LOOP;
    PERFORM set_config('enable_sort', saved_sort, true);
    PERFORM set_config('enable_hashjoin', saved_hashjoin, true);
    PERFORM set_config('enable_mergejoin', saved_mergejoin, true);
    SELECT array_agg(DISTINCT x) INTO found FROM unnest(found) x;

    IF coalesce(cardinality(found), 0) >= k THEN
        RETURN QUERY EXECUTE ranked_sql || 'WHERE p.id = ANY($2) ORDER BY b.d, p.sku LIMIT $3'
            USING queries, found, k;
        RETURN;
    END IF;

    -- The walk ran out of budget before k products passed the filter, or the catalogue holds fewer than k.
    RETURN QUERY EXECUTE ranked_sql || product_where || ' ORDER BY b.d, p.sku LIMIT $6'
        USING queries, categories, max_price, below_price, exclude_skus, k;
END
$fn$;

-- The k products nearest to a query vector under filters (see imgsearch_similar_multi).
--
-- The common cases take a short way (docs/filtered-search.md): one query vector and no filter but stock, and
-- optionally one category that has its own index. Those searches walk the photo index (or the category's, over
-- half-precision vectors, embedding::halfvec(512), as they hold them) with pgvector's iterative scan (ef_search
-- 100, or imgsearch.ef_search), with no estimate first; the nearest candidates' best photos are then ranked
-- exactly, as on every other path. Anything else (other categories, prices, exclusions, attribute filters, words
-- (imgsearch.words), invalid input for its error, fewer than k products found) goes through
-- imgsearch_similar_multi.
--
-- The statements are planned once per session and their plans reused (generic plans): planning the walk, a
-- join over a table with dozens of partial indexes, cost more than running it. A generic plan cannot know the
-- walk's LIMIT and assumes a tenth of the table, so sorting and hash or merge joins are ruled out for this
-- function: the only plan left for the walk is the index walk joined row by row to the products.
CREATE OR REPLACE FUNCTION imgsearch_similar(
    query vector,
    k integer DEFAULT 10,
    categories text[] DEFAULT NULL,
    in_stock_only boolean DEFAULT true,
    max_price numeric DEFAULT NULL,
    exclude_skus text[] DEFAULT NULL,
    below_price numeric DEFAULT NULL,
    filters jsonb DEFAULT NULL
) RETURNS TABLE (
    sku text, name text, category text, price numeric, in_stock boolean, image text, distance double precision
)
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
SET hnsw.iterative_scan = 'relaxed_order'
SET hnsw.ef_search = '100'
SET hnsw.max_scan_tuples = '50000'
SET plan_cache_mode = 'force_generic_plan'
SET enable_sort = 'off'
SET enable_hashjoin = 'off'
SET enable_mergejoin = 'off'
AS $fn$
#variable_conflict use_column
DECLARE
    q vector;
    q_half halfvec;
    space integer;
    only_in_stock boolean := coalesce(in_stock_only, true);
    per_product double precision;
    walk_limit integer;
    ids bigint[];
    distances double precision[];
    found bigint[];
    walk_category text;
    category_indexed boolean;
BEGIN
    IF query IS NULL THEN
        RAISE EXCEPTION 'imgsearch: the query vector is NULL' USING ERRCODE = '22023';
    END IF;
    IF cardinality(categories) <> 1 OR max_price IS NOT NULL OR below_price IS NOT NULL OR exclude_skus IS NOT NULL
       OR k IS NULL OR k < 1 OR k > 1000 OR vector_dims(query) <> 512 OR vector_norm(query) = 0
       OR imgsearch_attribute_filter(filters) IS NOT NULL
       OR nullif(current_setting('imgsearch.words', true), '') IS NOT NULL
       OR current_setting('imgsearch.exact_search', true) = 'on' THEN
        PERFORM imgsearch_planner_defaults();
        RETURN QUERY SELECT * FROM imgsearch_similar_multi(
            ARRAY[query], k, categories, in_stock_only, max_price, exclude_skus, below_price, filters);
        RETURN;
    END IF;

    q := l2_normalize(query);
    walk_category := categories[1];
    -- The search space, the photos per product (from the planner's statistics, no count, to one decimal as in
    -- imgsearch_similar_multi) and, for one category, whether it has its own valid index (named as
    -- imgsearch_category_index_name and imgsearch_tuned_category_index_name name them): one statement.
    SELECT sp.space, least(10, greatest(1, round(coalesce(ci.reltuples / nullif(cp.reltuples, 0), 1)::numeric, 1))),
           walk_category IS NOT NULL AND EXISTS (
               SELECT 1 FROM pg_index ix WHERE ix.indisvalid AND ix.indexrelid = to_regclass(quote_ident(
                   CASE WHEN sp.space IS NULL THEN imgsearch_category_index_name(walk_category)
                   ELSE imgsearch_tuned_category_index_name(walk_category) END)))
    INTO space, per_product, category_indexed
    FROM (SELECT imgsearch_search_space() AS space) sp, pg_class ci, pg_class cp
    WHERE ci.oid = CASE WHEN sp.space IS NULL THEN 'product_images'::regclass ELSE 'tuned_images'::regclass END
      AND cp.oid = 'products'::regclass;
    IF categories IS NOT NULL AND NOT category_indexed THEN
        -- One category takes the short way only when it has its own index, walked with a plan made for the
        -- category (a partial index serves only a plan that sees its value); else imgsearch_similar_multi.
        PERFORM imgsearch_planner_defaults();
        RETURN QUERY SELECT * FROM imgsearch_similar_multi(
            ARRAY[query], k, categories, in_stock_only, max_price, exclude_skus, below_price, filters);
        RETURN;
    END IF;
    IF space IS NOT NULL THEN
        q := imgsearch_project(q, space);
    END IF;
    q_half := q::halfvec(512);
    -- The graph search keeps ef products' worth of candidates (imgsearch.ef_search, default 100 as on every path);
    -- the walk reads the photos that pass the stock filter, k products' worth and as many again for each product's
    -- other photos (k when every product has one, as pgvector's own filtered query reads k), so that a product
    -- whose best photo the walk met late still counts.
    walk_limit := ceil(k * (2 * per_product - 1));
    PERFORM set_config('hnsw.ef_search', least(1000, greatest(walk_limit, ceil(per_product * greatest(k,
        coalesce(nullif(current_setting('imgsearch.ef_search', true), '')::integer, 100))))::integer)::text, true);
    PERFORM set_config('hnsw.max_scan_tuples', coalesce(
        nullif(current_setting('imgsearch.max_scan_tuples', true), '')::integer, 50000)::text, true);

    -- The walk: walk_limit photos, each with its exact distance (its row is read anyway); the candidates are the k
    -- products whose walked photos are nearest. A category's walk is planned for its call, knowing the LIMIT, so
    -- it picks them itself; the catalogue-wide walks, planned once, gather the photos with one aggregate rather
    -- than a grouping sized for a tenth of the table (a generic plan cannot know the walk's LIMIT), and a second
    -- statement picks them.
    IF walk_category IS NOT NULL THEN
        EXECUTE format('SELECT array_agg(t.id) FROM (SELECT w.product_id AS id FROM ('
            'SELECT i.product_id, (i.embedding <=> $1)::double precision AS d FROM %I i '
            'JOIN products p ON p.id = i.product_id WHERE i.category = $2 AND (p.in_stock OR NOT $3) '
            'ORDER BY i.embedding::halfvec(512) <=> $4 LIMIT $5) w '
            'GROUP BY w.product_id ORDER BY min(w.d), w.product_id LIMIT $6) t',
            CASE WHEN space IS NULL THEN 'product_images' ELSE 'tuned_images' END)
            INTO found USING q, walk_category, only_in_stock, q_half, walk_limit, k;
    ELSE
        IF space IS NULL THEN
            SELECT array_agg(w.product_id), array_agg(w.d) INTO ids, distances FROM (
                SELECT i.product_id, (i.embedding <=> q)::double precision AS d
                FROM product_images i JOIN products p ON p.id = i.product_id
                WHERE p.in_stock OR NOT only_in_stock
                ORDER BY i.embedding::halfvec(512) <=> q_half LIMIT walk_limit) w;
        ELSE
            SELECT array_agg(w.product_id), array_agg(w.d) INTO ids, distances FROM (
                SELECT i.product_id, (i.embedding <=> q)::double precision AS d
                FROM tuned_images i JOIN products p ON p.id = i.product_id
                WHERE p.in_stock OR NOT only_in_stock
                ORDER BY i.embedding::halfvec(512) <=> q_half LIMIT walk_limit) w;
        END IF;
        SELECT array_agg(t.id) INTO found FROM (
            SELECT t.id FROM unnest(ids, distances) AS t(id, d) GROUP BY t.id ORDER BY min(t.d), t.id LIMIT k) t;
    END IF;
    IF coalesce(cardinality(found), 0) < k THEN
        -- Fewer than k products near the query pass the stock filter (or the catalogue is that small).
        PERFORM imgsearch_planner_defaults();
        RETURN QUERY SELECT * FROM imgsearch_similar_multi(
            ARRAY[query], k, categories, in_stock_only, max_price, exclude_skus, below_price, filters);
        RETURN;
    END IF;

    -- Each candidate's best photo, exactly, over all its photos.
    IF space IS NULL THEN
        RETURN QUERY
        SELECT p.sku::text, p.name, p.category, p.price, p.in_stock, nullif(b.image, ''), b.d
        FROM products p CROSS JOIN LATERAL (
            SELECT i.image, (i.embedding <=> q)::double precision AS d
            FROM product_images i WHERE i.product_id = p.id ORDER BY 2, i.position LIMIT 1) b
        WHERE p.id = ANY(found)
        ORDER BY b.d, p.sku LIMIT k;
    ELSE
        RETURN QUERY
        SELECT p.sku::text, p.name, p.category, p.price, p.in_stock, nullif(i.image, ''), b.d
        FROM products p CROSS JOIN LATERAL (
            SELECT s.image_id, (s.embedding <=> q)::double precision AS d
            FROM tuned_images s JOIN product_images pi ON pi.id = s.image_id
            WHERE s.product_id = p.id ORDER BY 2, pi.position LIMIT 1) b
        JOIN product_images i ON i.id = b.image_id
        WHERE p.id = ANY(found)
        ORDER BY b.d, p.sku LIMIT k;
    END IF;
END
$fn$;

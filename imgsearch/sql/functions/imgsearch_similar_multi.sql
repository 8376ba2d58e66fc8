-- The k products nearest to one or more query vectors under filters: every search goes through it.
-- A product has one or more photos; its distance is the smallest distance between any query vector and any of
-- its photos, and the photo that gave it is returned as the product's image. One row per product, best first;
-- exactly k rows whenever at least k products match the filters.
--
-- Plan (docs/filtered-search.md). pgvector's HNSW scan applies the WHERE clause after walking the graph, so a
-- selective filter starves it. The choice between ranking the matching products exactly and walking an HNSW index is
-- made by cost, from the planner's estimate of the matching products (no count): exact search pays for every
-- matching product's photos (a b-tree lookup, a heap fetch and a 512-d distance each); the walk pays for every photo
-- it visits, about ef_search of them, or L / s when the filter passes a share s of the walked index's photos and L
-- must pass. A walked photo costs imgsearch.walk_cost (default 4, measured) times an exactly ranked one, so the
-- exact plan is taken when m * photos_per_product < walk_cost * max(ef_search, L / s). Filters estimated to match
-- fewer than imgsearch.exact_search_below products (default 100: fewer than one graph search's candidates) are
-- always ranked exactly; 0 turns the exact plan off (the walk always, for tests). The walked index is the category's
-- own (a partial HNSW index WHERE category = ..., see imgsearch_create_category_index) when the search names one to
-- four categories that all have one, one walk per category, else the catalogue-wide index. The walk (pgvector's
-- iterative scan over the photos' vectors rounded to half precision, as the indexes hold them:
-- embedding::halfvec(512), once per query vector) collects L photos that pass the filter: k products' worth, up to
-- 2k where the graph search's first ef_search candidates should hold that many (s * ef_search / 2), then ranks the k
-- products whose walked photos are nearest exactly by all their photos. It walks again, for max(4L, ef_search)
-- photos, when a walk ended at its limit with fewer than k products or went through more than four times the photos
-- s predicts (the matches are rarer near this query than in the catalogue: found late, out of order); if it still
-- has fewer than k it ranks the filter exactly. Filter fragments are fixed strings; every value is bound with USING.
-- The category filter applies to the photos' own copy of the category, so that a category index serves it. Session
-- settings imgsearch.exact_search_below, imgsearch.walk_cost, imgsearch.ef_search and imgsearch.max_scan_tuples tune
-- it and imgsearch.exact_search = on forces exact search (to measure recall).
--
-- Search space: when a tuned space is active (imgsearch tune), the queries are projected into it
-- (imgsearch_project) and everything above runs on tuned_images, the photos' projected vectors, instead of
-- product_images; callers pass raw VGG16 vectors either way. SET imgsearch.search_space = 'raw' searches the raw
-- space while a tuned one is active (imgsearch_search_space: both arms of an A/B test in one catalogue).
--
-- Attribute filters (filters: a JSON object, see imgsearch_attribute_filter) hold on the products' attributes
-- like stock and price: in the walk's lookup of each walked product and in the exact ranking, where the GIN index
-- ix_products_attributes serves equalities and any-of lists. How many products match is the planner's estimate
-- from the column's statistics, as for every other filter. So does the setting imgsearch.words (words a product's
-- name, category, attributes or description must match, imgsearch_words_query), on products.words.
CREATE OR REPLACE FUNCTION imgsearch_similar_multi(
    queries vector[],
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
AS $fn$
#variable_conflict use_column
DECLARE
    exact_below integer := coalesce(
        nullif(current_setting('imgsearch.exact_search_below', true), '')::integer, 100);
    space integer := imgsearch_search_space();
    attribute_filter jsonpath := imgsearch_attribute_filter(filters);
    -- Only products matching these words, when the session (or transaction) says so (imgsearch.words).
    words_query tsquery := imgsearch_words_query(nullif(current_setting('imgsearch.words', true), ''));
    -- The searched vectors (s) and their photos (i): one table in the raw space, two in a tuned one.
    photos_from text := 'product_images s JOIN LATERAL (SELECT s.image, s.position) i ON true';
    -- Each product with its best photo for the queries ($1; $8 when there is one), computed exactly over all its
    -- photos.
    ranked_sql text :=
        'SELECT p.sku::text, p.name, p.category, p.price, p.in_stock, nullif(b.image, ''''), b.d '
        'FROM products p CROSS JOIN LATERAL ('
        '  SELECT i.image, %s::double precision AS d '
        '  FROM %s WHERE s.product_id = p.id ORDER BY 2, i.position LIMIT 1) b ';
    product_where text := 'WHERE true';
    own_where text := '';
    excluded bigint[];
    walk_cost double precision := coalesce(nullif(current_setting('imgsearch.walk_cost', true), '')::double precision, 4);
    matches double precision;
    n_products double precision;
    n_walked double precision;
    share double precision;
    plan json;
    walk_categories text[];
    walk_category text;
    only_in_stock boolean := coalesce(in_stock_only, true);
    indexed bigint;
    category_photos double precision;
    q vector;
    ids bigint[];
    distances double precision[];
    walked_ids bigint[];
    walked_distances double precision[];
    returned bigint;
    walked bigint;
    visited bigint;
    visited_most bigint;
    walk_sql text;
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
    END IF;
    -- One query vector (the common case) is compared directly: no subquery per photo.
    ranked_sql := format(ranked_sql, CASE WHEN cardinality(queries) = 1 THEN '(s.embedding <=> $8)'
        ELSE '(SELECT min(s.embedding <=> q) FROM unnest($1) q)' END, photos_from);
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
    IF attribute_filter IS NOT NULL THEN own_where := own_where || ' AND p.attributes @@ $11'; END IF;
    IF words_query IS NOT NULL THEN own_where := own_where || ' AND p.words @@ $12'; END IF;
    product_where := product_where || own_where;
    IF categories IS NOT NULL THEN
        product_where := product_where || ' AND p.category = ANY($2)';
    END IF;
    IF exclude_skus IS NOT NULL THEN
        product_where := product_where || ' AND p.sku <> ALL($5)';
        SELECT array_agg(p.id) INTO excluded FROM products p WHERE p.sku = ANY(exclude_skus);
    END IF;

    IF current_setting('imgsearch.exact_search', true) = 'on' THEN
        RETURN QUERY EXECUTE ranked_sql || product_where || ' ORDER BY b.d, p.sku LIMIT $6'
            USING queries, categories, max_price, below_price, exclude_skus, k, NULL::integer, queries[1],
                  NULL::bigint[], NULL::text, attribute_filter, words_query;
        RETURN;
    END IF;

    -- Photos per product and the walked index's photos, from the planner's statistics (no count). Photos per
    -- product to one decimal: the statistics tell no more, and 200,008 photos for 200,000 products would otherwise
    -- make every walk go on for an eleventh product's photo (20 more photos walked under a 5% filter).
    SELECT greatest(cp.reltuples, 0), greatest(ci.reltuples, 0),
           least(10, greatest(1, round(coalesce(ci.reltuples / nullif(cp.reltuples, 0), 1)::numeric, 1)))
    INTO n_products, n_walked, per_product
    FROM pg_class ci, pg_class cp
    WHERE ci.oid = CASE WHEN space IS NULL THEN 'product_images'::regclass ELSE 'tuned_images'::regclass END
      AND cp.oid = 'products'::regclass;
    IF categories IS NOT NULL THEN
        -- The distinct categories and their own indexes (named as imgsearch_category_index_name and
        -- imgsearch_tuned_category_index_name name them), valid ones only, in one statement: each looked up by
        -- its name's oid (a LATERAL that is not flattened: no scan of the catalogue's relations).
        SELECT array_agg(u.c), count(x.photos), sum(x.photos)
        INTO walk_categories, indexed, category_photos
        FROM (SELECT DISTINCT c FROM unnest(categories) c WHERE c IS NOT NULL) u
        LEFT JOIN LATERAL (
            SELECT greatest(r.reltuples, 0) AS photos FROM pg_class r JOIN pg_index ix ON ix.indexrelid = r.oid
            WHERE ix.indisvalid AND r.oid = to_regclass(quote_ident(CASE WHEN space IS NULL
                THEN imgsearch_category_index_name(u.c) ELSE imgsearch_tuned_category_index_name(u.c) END))
            LIMIT 1) x ON true;
        IF coalesce(cardinality(walk_categories), 0) BETWEEN 1 AND 4 AND indexed = cardinality(walk_categories) THEN
            n_walked := category_photos;
        ELSE
            walk_categories := NULL;  -- the catalogue-wide index, filtered by category
        END IF;
    END IF;

    -- Matching products: the planner's estimate, unless nothing but stock filters the walked index (then the walk
    -- is cheap whatever the share in stock, and the fallbacks below cover a sold-out neighbourhood).
    IF product_where = 'WHERE true' OR (own_where IN ('', ' AND p.in_stock') AND exclude_skus IS NULL
            AND n_products > 0 AND (categories IS NULL OR walk_categories IS NOT NULL)) THEN
        matches := n_walked / per_product;
    ELSE
        EXECUTE 'EXPLAIN (FORMAT JSON) SELECT 1 FROM products p ' || product_where
            INTO plan USING queries, categories, max_price, below_price, exclude_skus, k, NULL::integer, NULL::vector,
                            NULL::bigint[], NULL::text, attribute_filter, words_query;
        matches := (plan -> 0 -> 'Plan' ->> 'Plan Rows')::double precision;
    END IF;
    ef := greatest(k, coalesce(nullif(current_setting('imgsearch.ef_search', true), '')::integer, 100));
    share := least(1, greatest(matches * per_product, 1) / greatest(n_walked, 1));
    walk_limit := ceil(per_product * greatest(k, least(2 * k, floor(share * ef / 2))));
    IF exact_below > 0 AND product_where <> 'WHERE true' AND (matches < exact_below
            OR matches * per_product < walk_cost * greatest(ef * per_product, walk_limit / share)) THEN
        -- The attribute and word predicates compare with a sub-select of their value here: the planner does not
        -- estimate them a second time (the estimate above ran the jsonpath over the column's 1,000-object
        -- histogram, 0.5-1.5 ms), and their GIN indexes still serve them: with no more than a few thousand
        -- products matching (else the cost would have chosen the walk), a bitmap scan is the plan either way.
        RETURN QUERY EXECUTE ranked_sql || replace(replace(product_where, '@@ $11', '@@ (SELECT $11)'),
                '@@ $12', '@@ (SELECT $12)') || ' ORDER BY b.d, p.sku LIMIT $6'
            USING queries, categories, max_price, below_price, exclude_skus, k, NULL::integer, queries[1],
                  NULL::bigint[], NULL::text, attribute_filter, words_query;
        RETURN;
    END IF;

    -- Local to this call: the SET clauses above restore the caller's values when the function returns.
    PERFORM set_config('hnsw.ef_search', least(1000, greatest(walk_limit, ceil(ef * per_product)))::text, true);
    PERFORM set_config('hnsw.max_scan_tuples', coalesce(
        nullif(current_setting('imgsearch.max_scan_tuples', true), '')::integer, 50000)::text, true);
    -- The cost said walk: without this the planner may still prefer to sort a mid-sized filtered set exactly
    -- (O(matches) per query), or to join the products by hash.
    saved_sort := current_setting('enable_sort');
    saved_hashjoin := current_setting('enable_hashjoin');
    saved_mergejoin := current_setting('enable_mergejoin');
    PERFORM set_config('enable_sort', 'off', true);
    PERFORM set_config('enable_hashjoin', 'off', true);
    PERFORM set_config('enable_mergejoin', 'off', true);
    -- The walk of a category's own index: its plan must see the bound category ($10), so it is made per call.
    walk_sql := 'SELECT array_agg(c.product_id), array_agg(c.d), count(*), max(c.n) FROM ('
        'SELECT i.product_id, (i.embedding <=> $8)::double precision AS d, i.n FROM ('
        'SELECT w.product_id, w.embedding, row_number() OVER () AS n FROM ('
        'SELECT s.product_id, s.embedding FROM ' || CASE WHEN space IS NULL THEN 'product_images' ELSE 'tuned_images' END
        || ' s WHERE s.category = $10 ORDER BY s.embedding::halfvec(512) <=> $8::halfvec(512)) w) i '
        || CASE WHEN own_where <> '' THEN 'CROSS JOIN LATERAL (SELECT p.in_stock, p.price, p.attributes, p.words FROM products p '
            'WHERE p.id = i.product_id LIMIT 1) p ' ELSE '' END
        || 'WHERE true' || own_where || CASE WHEN excluded IS NOT NULL THEN ' AND i.product_id <> ALL($9)' ELSE '' END
        || ' LIMIT $7) c';
    FOR attempt IN 1..2 LOOP
        walked_ids := '{}';
        walked_distances := '{}';
        walked := 0;
        visited_most := 0;
        FOREACH q IN ARRAY queries LOOP
            FOREACH walk_category IN ARRAY coalesce(walk_categories, ARRAY[NULL::text]) LOOP
                -- Each walked photo comes with its exact distance (its row is read anyway) and its place in the
                -- walk (n), so that the walk knows how many photos it went through to find walk_limit that pass.
                -- The products are looked up in a LATERAL subquery that cannot be flattened, so that the walk stays
                -- the outer side of the join and its order is the order the LIMIT takes (whatever the planner's
                -- statistics say). The catalogue-wide walk is a prepared statement planned once per session
                -- (every filter in it, each one off when its value is NULL).
                IF walk_categories IS NOT NULL THEN
                    EXECUTE walk_sql INTO ids, distances, returned, visited
                        USING queries, categories, max_price, below_price, exclude_skus, k, walk_limit, q, excluded,
                              walk_category, attribute_filter, words_query;
                ELSIF space IS NULL THEN
                    SELECT array_agg(c.product_id), array_agg(c.d), count(*), max(c.n)
                    INTO ids, distances, returned, visited FROM (
                        SELECT i.product_id, (i.embedding <=> q)::double precision AS d, i.n
                        FROM (SELECT w.product_id, w.embedding, w.category, row_number() OVER () AS n FROM (
                            SELECT s.product_id, s.embedding, s.category FROM product_images s
                            ORDER BY s.embedding::halfvec(512) <=> q::halfvec(512)) w) i
                        CROSS JOIN LATERAL (
                            SELECT p.in_stock, p.price, p.attributes, p.words FROM products p
                            WHERE p.id = i.product_id LIMIT 1) p
                        WHERE (p.in_stock OR NOT only_in_stock) AND (max_price IS NULL OR p.price <= max_price)
                          AND (below_price IS NULL OR p.price < below_price)
                          AND (attribute_filter IS NULL OR p.attributes @@ attribute_filter)
                          AND (words_query IS NULL OR p.words @@ words_query)
                          AND (categories IS NULL OR i.category = ANY(categories))
                          AND (excluded IS NULL OR i.product_id <> ALL(excluded))
                        LIMIT walk_limit) c;
                ELSE
                    SELECT array_agg(c.product_id), array_agg(c.d), count(*), max(c.n)
                    INTO ids, distances, returned, visited FROM (
                        SELECT i.product_id, (i.embedding <=> q)::double precision AS d, i.n
                        FROM (SELECT w.product_id, w.embedding, w.category, row_number() OVER () AS n FROM (
                            SELECT s.product_id, s.embedding, s.category FROM tuned_images s
                            ORDER BY s.embedding::halfvec(512) <=> q::halfvec(512)) w) i
                        CROSS JOIN LATERAL (
                            SELECT p.in_stock, p.price, p.attributes, p.words FROM products p
                            WHERE p.id = i.product_id LIMIT 1) p
                        WHERE (p.in_stock OR NOT only_in_stock) AND (max_price IS NULL OR p.price <= max_price)
                          AND (below_price IS NULL OR p.price < below_price)
                          AND (attribute_filter IS NULL OR p.attributes @@ attribute_filter)
                          AND (words_query IS NULL OR p.words @@ words_query)
                          AND (categories IS NULL OR i.category = ANY(categories))
                          AND (excluded IS NULL OR i.product_id <> ALL(excluded))
                        LIMIT walk_limit) c;
                END IF;
                walked_ids := walked_ids || coalesce(ids, '{}');
                walked_distances := walked_distances || coalesce(distances, '{}');
                walked := greatest(walked, returned);
                visited_most := greatest(visited_most, coalesce(visited, 0));
            END LOOP;
        END LOOP;
        -- The k products whose walked photos are nearest: the ones ranked below by all their photos.
        SELECT array_agg(w.id) INTO found FROM (
            SELECT t.id FROM unnest(walked_ids, walked_distances) AS t(id, d) GROUP BY t.id ORDER BY min(t.d), t.id
            LIMIT k) w;
        -- A second, longer walk when a walk ended at its limit with fewer than k products, or went through more
        -- than four times the photos the filter's share predicts: the matching products are rarer near this
        -- query than in the catalogue, found late by the walk and so out of order (a relaxed walk's later
        -- batches); a longer walk finds the nearest of them. Not when a walk stopped short of its limit (its scan
        -- budget ran out): the exact ranking below answers then.
        EXIT WHEN attempt = 2 OR walked < walk_limit OR (coalesce(cardinality(found), 0) >= k
            AND visited_most <= 4 * walk_limit / share);
        walk_limit := greatest(4 * walk_limit, ceil(ef * per_product));
        PERFORM set_config('hnsw.ef_search', least(1000, walk_limit)::text, true);
    END LOOP;
    PERFORM set_config('enable_sort', saved_sort, true);
    PERFORM set_config('enable_hashjoin', saved_hashjoin, true);
    PERFORM set_config('enable_mergejoin', saved_mergejoin, true);

    -- The candidates, each by its best photo over all its photos (prepared, like the walk).
    IF coalesce(cardinality(found), 0) >= k AND space IS NULL AND cardinality(queries) = 1 THEN
        q := queries[1];
        RETURN QUERY
        SELECT p.sku::text, p.name, p.category, p.price, p.in_stock, nullif(b.image, ''), b.d
        FROM products p CROSS JOIN LATERAL (
            SELECT s.image, (s.embedding <=> q)::double precision AS d
            FROM product_images s WHERE s.product_id = p.id ORDER BY 2, s.position LIMIT 1) b
        WHERE p.id = ANY(found)
        ORDER BY b.d, p.sku LIMIT k;
        RETURN;
    ELSIF coalesce(cardinality(found), 0) >= k AND space IS NULL THEN
        RETURN QUERY
        SELECT p.sku::text, p.name, p.category, p.price, p.in_stock, nullif(b.image, ''), b.d
        FROM products p CROSS JOIN LATERAL (
            SELECT s.image, (SELECT min(s.embedding <=> x) FROM unnest(queries) x)::double precision AS d
            FROM product_images s WHERE s.product_id = p.id ORDER BY 2, s.position LIMIT 1) b
        WHERE p.id = ANY(found)
        ORDER BY b.d, p.sku LIMIT k;
        RETURN;
    ELSIF coalesce(cardinality(found), 0) >= k THEN
        RETURN QUERY
        SELECT p.sku::text, p.name, p.category, p.price, p.in_stock, nullif(i.image, ''), b.d
        FROM products p CROSS JOIN LATERAL (
            SELECT s.image_id, (SELECT min(s.embedding <=> x) FROM unnest(queries) x)::double precision AS d
            FROM tuned_images s JOIN product_images pi ON pi.id = s.image_id
            WHERE s.product_id = p.id ORDER BY 2, pi.position LIMIT 1) b
        JOIN product_images i ON i.id = b.image_id
        WHERE p.id = ANY(found)
        ORDER BY b.d, p.sku LIMIT k;
        RETURN;
    END IF;

    -- The walk ran out of budget before k products passed the filter, or the catalogue holds fewer than k.
    RETURN QUERY EXECUTE ranked_sql || product_where || ' ORDER BY b.d, p.sku LIMIT $6'
        USING queries, categories, max_price, below_price, exclude_skus, k, NULL::integer, queries[1],
                  NULL::bigint[], NULL::text, attribute_filter, words_query;
END
$fn$;

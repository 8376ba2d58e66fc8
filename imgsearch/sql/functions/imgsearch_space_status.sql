-- Which space searches use, and how much of the catalogue the active one has not seen: products added since it
-- was learnt or in categories it did not learn (still searchable, through the raw part the map keeps; but
-- imgsearch stats suggests re-tuning past a share). No row when searches use the raw space.
CREATE OR REPLACE FUNCTION imgsearch_space_status()
RETURNS TABLE (
    space integer, created_at timestamptz, method text, parameters jsonb, learnt_products integer,
    learnt_photos integer, learnt_categories integer, products bigint, unseen_products bigint,
    unseen_categories text[]
)
LANGUAGE sql STABLE
SET search_path FROM CURRENT
AS $fn$
    SELECT s.id, s.created_at, s.method, s.parameters, s.products, s.photos, cardinality(s.categories),
           (SELECT count(*) FROM products),
           (SELECT count(*) FROM products p WHERE p.created_at > s.created_at OR p.category <> ALL(s.categories)),
           (SELECT coalesce(array_agg(DISTINCT p.category ORDER BY p.category), '{}') FROM products p
            WHERE p.category <> ALL(s.categories))
    FROM search_spaces s WHERE s.active
$fn$;

-- The shoppers' events between `since` (inclusive) and `until` (exclusive), summed for a report
-- (imgsearch/feedback.py turns the sums into rates, and compares variants with confidence intervals). Reads the
-- sums imgsearch_record_events keeps, not the events, so its time does not grow with the traffic: event counts
-- are kept by hour (the window widens to whole hours: from the hour holding `since` to the last hour starting
-- before `until`), searches by the time of their first event.
--
-- One row per section and key:
--   section 'variant': one row per variant (variant = its name) and one for all (variant NULL): every column.
--   section 'category': one row per result category (key; '' unknown), all variants together: the event counts.
--   section 'rank': one row per position 1..max_rank (key), all variants together: impressions and clicks.
-- Per search (a list of results shown; searches with at least one impression count): searches_clicked have a
-- click, searches_bought a purchase; reciprocal_rank_sum adds 1/rank of each search's best-placed click (0
-- without a click: its mean over searches is the mean reciprocal rank) and reciprocal_rank_squares its squares
-- (for the variance).
CREATE OR REPLACE FUNCTION imgsearch_event_report(since timestamptz, until timestamptz, max_rank integer DEFAULT 20)
RETURNS TABLE (
    section text, variant text, key text, searches bigint, impressions bigint, clicks bigint, carts bigint,
    purchases bigint, revenue numeric, searches_clicked bigint, searches_bought bigint,
    reciprocal_rank_sum double precision, reciprocal_rank_squares double precision
)
LANGUAGE sql STABLE
SET search_path FROM CURRENT
AS $fn$
    WITH searches AS (
        SELECT p.variant, count(*) AS searches, count(p.best_click) AS clicked,
               count(*) FILTER (WHERE p.bought) AS bought,
               coalesce(sum(1.0 / p.best_click), 0)::double precision AS rr,
               coalesce(sum(1.0 / (p.best_click::double precision ^ 2)), 0) AS rr2
        FROM search_summaries p
        WHERE p.started_at >= since AND p.started_at < until AND p.shown
        GROUP BY GROUPING SETS ((p.variant), ())
    ), events AS (
        SELECT CASE WHEN GROUPING(e.variant) = 0 THEN 'variant'
                    WHEN GROUPING(e.category) = 0 THEN 'category'
                    WHEN GROUPING(e.rank) = 0 THEN 'rank'
                    ELSE 'variant' END AS section,
               CASE WHEN GROUPING(e.variant) = 0 THEN e.variant END AS variant,
               CASE WHEN GROUPING(e.category) = 0 THEN e.category
                    WHEN GROUPING(e.rank) = 0 THEN e.rank::text END AS key,
               coalesce(sum(e.events) FILTER (WHERE e.kind = 'impression'), 0)::bigint AS impressions,
               coalesce(sum(e.events) FILTER (WHERE e.kind = 'click'), 0)::bigint AS clicks,
               coalesce(sum(e.events) FILTER (WHERE e.kind = 'add_to_cart'), 0)::bigint AS carts,
               coalesce(sum(e.events) FILTER (WHERE e.kind = 'purchase'), 0)::bigint AS purchases,
               coalesce(sum(e.value) FILTER (WHERE e.kind = 'purchase'), 0) AS revenue
        FROM search_event_counts e
        WHERE e.hour >= date_trunc('hour', since) AND e.hour < until
        GROUP BY GROUPING SETS ((e.variant), (e.category), (e.rank), ())
        HAVING GROUPING(e.rank) = 1 OR e.rank BETWEEN 1 AND max_rank
    )
    SELECT e.section, e.variant, e.key, s.searches, e.impressions, e.clicks, e.carts, e.purchases, e.revenue,
           s.clicked, s.bought, s.rr, s.rr2
    FROM events e
    LEFT JOIN searches s ON e.section = 'variant' AND s.variant IS NOT DISTINCT FROM e.variant
    ORDER BY e.section DESC, e.variant NULLS FIRST, e.key;
$fn$;

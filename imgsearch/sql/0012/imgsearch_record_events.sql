-- Stores a batch of shoppers' events (imgsearch/feedback.py), at most 1000, each once: an event_id already
-- stored is skipped, so a website may send a batch again after a timeout. Returns how many were new. The new
-- ones are also added to the sums the report reads (search_event_counts, search_summaries).
--
-- events: a JSON array of objects with event_id, kind (impression, click, add_to_cart, purchase), search_id and
-- optionally occurred_at (default: now), shopper, sku, rank (1 = first result), category (default: the SKU's
-- category in the catalogue), variant and value (a purchase's amount). A bad event refuses the whole batch
-- (SQLSTATE 22023 or the table's check constraints).
-- SECURITY DEFINER: the website's role (a reader, which may not write to the catalogue) records events through
-- this function only.
CREATE OR REPLACE FUNCTION imgsearch_record_events(events jsonb) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path FROM CURRENT
AS $fn$
DECLARE
    stored integer;
    fresh jsonb;
BEGIN
    IF jsonb_typeof(events) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'imgsearch: events must be a JSON array of objects' USING ERRCODE = '22023';
    END IF;
    IF jsonb_array_length(events) > 1000 THEN
        RAISE EXCEPTION 'imgsearch: at most 1000 events at once, got %', jsonb_array_length(events)
            USING ERRCODE = '22023';
    END IF;
    IF EXISTS (SELECT 1 FROM jsonb_array_elements(events) e WHERE jsonb_typeof(e) <> 'object') THEN
        RAISE EXCEPTION 'imgsearch: every event must be a JSON object' USING ERRCODE = '22023';
    END IF;
    WITH new AS (
        INSERT INTO search_events (event_id, kind, occurred_at, search_id, shopper, sku, rank, category, variant,
                                   value)
        SELECT e.event_id, e.kind, coalesce(e.occurred_at, now()), e.search_id, e.shopper, e.sku, e.rank,
               coalesce(e.category, (SELECT p.category FROM products p WHERE p.sku = e.sku)),
               coalesce(e.variant, ''), e.value
        FROM jsonb_to_recordset(events) AS e(
            event_id text, kind text, occurred_at timestamptz, search_id text, shopper text, sku text,
            rank integer, category text, variant text, value numeric
        )
        -- In event_id order: two batches sharing events wait for each other instead of deadlocking.
        ORDER BY e.event_id
        ON CONFLICT (event_id) DO NOTHING
        RETURNING kind, occurred_at, search_id, rank, category, variant, value
    )
    SELECT count(*), jsonb_agg(to_jsonb(new)) INTO stored, fresh FROM new;
    IF stored = 0 THEN
        RETURN 0;
    END IF;
    -- The sums the report reads, in key order (every writer locks rows in the same order: no deadlock between
    -- two batches; the counts before the searches, always).
    INSERT INTO search_event_counts AS c (hour, variant, category, rank, kind, events, value)
    SELECT date_trunc('hour', f.occurred_at), f.variant, coalesce(f.category, ''), coalesce(f.rank, 0), f.kind,
           count(*), coalesce(sum(f.value), 0)
    FROM jsonb_to_recordset(fresh) AS f(kind text, occurred_at timestamptz, rank integer, category text,
                                        variant text, value numeric)
    GROUP BY 1, 2, 3, 4, 5
    ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (hour, variant, category, rank, kind)
        DO UPDATE SET events = c.events + excluded.events, value = c.value + excluded.value;
    INSERT INTO search_summaries AS s (search_id, variant, started_at, shown, best_click, carts, bought)
    SELECT f.search_id, min(f.variant), min(f.occurred_at), bool_or(f.kind = 'impression'),
           min(f.rank) FILTER (WHERE f.kind = 'click'), count(*) FILTER (WHERE f.kind = 'add_to_cart'),
           bool_or(f.kind = 'purchase')
    FROM jsonb_to_recordset(fresh) AS f(kind text, occurred_at timestamptz, search_id text, rank integer,
                                        variant text)
    GROUP BY f.search_id
    ORDER BY f.search_id
    ON CONFLICT (search_id) DO UPDATE SET
        started_at = least(s.started_at, excluded.started_at),
        shown = s.shown OR excluded.shown,
        best_click = least(s.best_click, excluded.best_click),
        carts = s.carts + excluded.carts,
        bought = s.bought OR excluded.bought;
    RETURN stored;
END
$fn$;

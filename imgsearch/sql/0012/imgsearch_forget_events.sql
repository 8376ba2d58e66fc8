-- Deletes the shoppers' events (and their sums) that occurred more than `days` days ago (the retention setting,
-- IMGSEARCH_EVENT_RETENTION_DAYS); returns how many. SECURITY DEFINER, like imgsearch_record_events, so that the
-- role that records may also keep the table to its retention.
CREATE OR REPLACE FUNCTION imgsearch_forget_events(days integer) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path FROM CURRENT
AS $fn$
DECLARE
    gone bigint;
BEGIN
    IF days IS NULL OR days < 1 THEN
        RAISE EXCEPTION 'imgsearch: the retention must be at least 1 day, got %', days USING ERRCODE = '22023';
    END IF;
    DELETE FROM search_events WHERE occurred_at < now() - make_interval(days => days);
    GET DIAGNOSTICS gone = ROW_COUNT;
    DELETE FROM search_event_counts WHERE hour < date_trunc('hour', now() - make_interval(days => days));
    DELETE FROM search_summaries WHERE started_at < now() - make_interval(days => days);
    RETURN gone;
END
$fn$;

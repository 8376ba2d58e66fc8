-- The search space a search uses: the active tuned space (imgsearch tune), or NULL for the raw VGG16 space. The
-- setting imgsearch.search_space chooses per session or per transaction: 'active' (or unset: the default) or 'raw',
-- so that one catalogue serves both arms of an A/B test of a tuned space (SET LOCAL imgsearch.search_space = 'raw'
-- in the raw arm's transaction). Anything else is an error rather than a silent default.
CREATE OR REPLACE FUNCTION imgsearch_search_space() RETURNS integer
LANGUAGE plpgsql STABLE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    chosen text := coalesce(nullif(current_setting('imgsearch.search_space', true), ''), 'active');
BEGIN
    IF chosen = 'raw' THEN
        RETURN NULL;
    ELSIF chosen <> 'active' THEN
        RAISE EXCEPTION 'imgsearch: imgsearch.search_space must be raw or active, got %',
            quote_literal(left(chosen, 40)) USING ERRCODE = '22023';
    END IF;
    RETURN imgsearch_active_space();
END
$fn$;

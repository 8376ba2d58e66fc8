-- The id of the active tuned search space, or NULL when searches use the raw VGG16 space.
CREATE OR REPLACE FUNCTION imgsearch_active_space() RETURNS integer
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
    SELECT s.id FROM search_spaces s WHERE s.active
$fn$;

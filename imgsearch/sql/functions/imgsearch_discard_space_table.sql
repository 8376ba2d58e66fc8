-- Cleans up after an imgsearch tune that did not finish (killed, failed): the half-built table of projected
-- vectors and the spaces that were never activated. The active space and its vectors are not touched.
CREATE OR REPLACE FUNCTION imgsearch_discard_space_table() RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $fn$
BEGIN
    DROP TABLE IF EXISTS tuned_images_next;
    DELETE FROM search_spaces s WHERE NOT s.active AND s.activated_at IS NULL;
END
$fn$;

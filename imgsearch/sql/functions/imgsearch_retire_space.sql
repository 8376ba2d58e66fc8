-- imgsearch tune --drop: searches go back to the raw VGG16 space at once. The active space is retired (its map
-- deleted, its record kept) and its vectors and their category indexes removed. Returns the retired space's id,
-- or NULL when none was active.
CREATE OR REPLACE FUNCTION imgsearch_retire_space() RETURNS integer
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $fn$
DECLARE
    retired integer;
    twin text;
BEGIN
    UPDATE search_spaces s SET active = false, retired_at = now() WHERE s.active RETURNING s.id INTO retired;
    IF retired IS NULL THEN
        RETURN NULL;
    END IF;
    DELETE FROM search_space_rows r WHERE r.space_id = retired;
    TRUNCATE tuned_images;
    FOR twin IN
        SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE i.indrelid = 'tuned_images'::regclass AND i.indpred IS NOT NULL
    LOOP
        EXECUTE format('DROP INDEX %I', twin);
    END LOOP;
    RETURN retired;
END
$fn$;

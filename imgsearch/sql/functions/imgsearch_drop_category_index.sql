-- Drops a category index (and its twin over the tuned space's vectors); returns whether there was one.
CREATE OR REPLACE FUNCTION imgsearch_drop_category_index(target_category text) RETURNS boolean
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $fn$
DECLARE
    target_index text := imgsearch_category_index_name(target_category);
BEGIN
    EXECUTE format('DROP INDEX IF EXISTS %I', imgsearch_tuned_category_index_name(target_category));
    IF NOT imgsearch_category_index_exists(target_index) THEN
        RETURN false;
    END IF;
    EXECUTE format('DROP INDEX %I', target_index);
    RETURN true;
END
$fn$;

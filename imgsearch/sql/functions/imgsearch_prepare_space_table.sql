-- First step of imgsearch tune once the map is stored: an empty table shaped like tuned_images, without indexes
-- (they are built once it is filled, much faster than row by row), plus the version (xmin) of each photo row
-- it was projected from, so that imgsearch_activate_space can tell which photos changed meanwhile.
CREATE OR REPLACE FUNCTION imgsearch_prepare_space_table() RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $fn$
BEGIN
    DROP TABLE IF EXISTS tuned_images_next;
    CREATE TABLE tuned_images_next (LIKE tuned_images INCLUDING DEFAULTS INCLUDING STORAGE INCLUDING CONSTRAINTS);
    ALTER TABLE tuned_images_next ADD COLUMN source_xmin bigint;
END
$fn$;

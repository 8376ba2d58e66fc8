-- Trigger function: products.updated_at follows every change of the row.
CREATE OR REPLACE FUNCTION imgsearch_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $fn$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$fn$;

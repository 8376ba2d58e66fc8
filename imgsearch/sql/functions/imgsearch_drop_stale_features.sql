-- A photo whose vector changes is a new picture: the local features of the old one no longer describe it, so
-- they go (ingestion writes the new picture's features in the same transaction, after this). Any writer is
-- covered, the Python API and plain SQL alike.
CREATE OR REPLACE FUNCTION imgsearch_drop_stale_features() RETURNS trigger
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $fn$
BEGIN
    -- Compared here, not in the trigger's WHEN clause: pgvector's operators live in another schema, which a
    -- restored dump's WHEN clause (run with an empty search_path) would not find.
    IF OLD.embedding IS DISTINCT FROM NEW.embedding THEN
        DELETE FROM photo_features WHERE image_id = NEW.id;
    END IF;
    RETURN NULL;
END
$fn$;

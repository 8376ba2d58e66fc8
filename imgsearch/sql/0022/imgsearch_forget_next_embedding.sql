-- Trigger on product_images: a photo whose vector changes while the catalogue is being re-embedded (imgsearch
-- reembed) is a new picture, so the vector computed for the old one in the next embedding space is forgotten; the
-- re-embedding computes it again before it switches. Any writer is covered, the Python API and plain SQL alike.
CREATE OR REPLACE FUNCTION imgsearch_forget_next_embedding() RETURNS trigger
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $fn$
BEGIN
    -- Compared here, not in a WHEN clause: pgvector's operators live in another schema, which a restored dump's
    -- WHEN clause (run with an empty search_path) would not find. An update that sets both keeps the new pair.
    IF OLD.embedding IS DISTINCT FROM NEW.embedding AND OLD.embedding_next IS NOT DISTINCT FROM NEW.embedding_next THEN
        NEW.embedding_next := NULL;
    END IF;
    RETURN NEW;
END
$fn$;

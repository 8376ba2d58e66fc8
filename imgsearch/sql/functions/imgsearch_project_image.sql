-- Trigger on product_images: a photo added or changed while a tuned space is active gets its projected vector
-- (ingestion needs nothing else); a category change follows.
CREATE OR REPLACE FUNCTION imgsearch_project_image() RETURNS trigger
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $fn$
DECLARE
    space integer := imgsearch_active_space();
BEGIN
    IF space IS NULL THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.embedding = OLD.embedding THEN
        UPDATE tuned_images t SET category = NEW.category WHERE t.image_id = NEW.id;
        RETURN NULL;
    END IF;
    INSERT INTO tuned_images AS t (image_id, product_id, category, embedding)
    VALUES (NEW.id, NEW.product_id, NEW.category, imgsearch_project(NEW.embedding, space))
    ON CONFLICT (image_id) DO UPDATE
        SET product_id = excluded.product_id, category = excluded.category, embedding = excluded.embedding;
    RETURN NULL;
END
$fn$;

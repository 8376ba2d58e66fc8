-- A photo whose local features change loses the visual words made from the old ones (every vocabulary's).
CREATE OR REPLACE FUNCTION imgsearch_forget_visual_words() RETURNS trigger
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $fn$
BEGIN
    DELETE FROM visual_word_photos WHERE image_id = NEW.image_id;
    RETURN NULL;
END
$fn$;

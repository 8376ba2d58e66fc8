-- Sets the language of the catalogue's words (a text search configuration: 'english', 'german', 'simple'...) and
-- computes every product's words again in it, in the caller's transaction. Returns the products updated.
CREATE OR REPLACE FUNCTION imgsearch_set_text_language(language regconfig) RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    updated bigint;
BEGIN
    IF language IS NULL THEN
        RAISE EXCEPTION 'imgsearch: give a text search configuration, such as english or simple' USING ERRCODE = '22023';
    END IF;
    UPDATE catalogue_settings SET text_language = language;
    UPDATE products p SET words = imgsearch_product_words(p.name, p.category, p.description, p.attributes, language)
    WHERE p.words IS DISTINCT FROM imgsearch_product_words(p.name, p.category, p.description, p.attributes, language);
    GET DIAGNOSTICS updated = ROW_COUNT;
    RETURN updated;
END
$fn$;

-- The text search configuration (language) of the catalogue's words: how names, descriptions and text attributes
-- are split into words and stemmed, and so how a search's words are read (imgsearch_set_text_language changes it).
CREATE OR REPLACE FUNCTION imgsearch_text_language() RETURNS regconfig
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
    SELECT coalesce((SELECT s.text_language FROM catalogue_settings s), 'english'::regconfig);
$fn$;

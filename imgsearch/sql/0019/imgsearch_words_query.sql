-- A search's words as a full-text query in the catalogue's language: web search syntax ("slim fit" a phrase,
-- -red without, or: either). NULL for NULL; words that say nothing searchable (empty, only stop words such as
-- "the") raise SQLSTATE 22023 rather than match nothing or everything.
CREATE OR REPLACE FUNCTION imgsearch_words_query(words text) RETURNS tsquery
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    parsed tsquery;
BEGIN
    IF words IS NULL THEN
        RETURN NULL;
    END IF;
    IF length(words) > 1000 THEN
        RAISE EXCEPTION 'imgsearch: the words are longer than 1000 characters' USING ERRCODE = '22023';
    END IF;
    parsed := websearch_to_tsquery(imgsearch_text_language(), words);
    IF numnode(parsed) = 0 THEN
        RAISE EXCEPTION 'imgsearch: the words % hold nothing to search for (empty, or only words such as "the")',
            left(to_jsonb(words)::text, 60) USING ERRCODE = '22023';
    END IF;
    RETURN parsed;
END
$fn$;

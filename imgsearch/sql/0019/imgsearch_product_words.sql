-- A product's words, as its full-text searches see them: its name (weight A), its category and text attributes
-- (values and list items; B) and its description (C), in the given text search configuration.
CREATE OR REPLACE FUNCTION imgsearch_product_words(
    name text, category text, description text, attributes jsonb, language regconfig
) RETURNS tsvector
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
    SELECT setweight(to_tsvector(language, coalesce(name, '')), 'A')
        || setweight(to_tsvector(language, coalesce(category, '') || ' ' || coalesce((
               SELECT string_agg(v #>> '{}', ' ')
               FROM jsonb_path_query(coalesce(attributes, '{}'), 'lax $.* ? (@.type() == "string")') v), '')), 'B')
        || setweight(to_tsvector(language, coalesce(description, '')), 'C');
$fn$;

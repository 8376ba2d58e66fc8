-- Trigger function: keeps products.words (imgsearch_product_words) in step with the name, category, description
-- and attributes it is made of, in the catalogue's language. Stock and price updates do not name those columns,
-- so they never run it (and stay HOT updates).
CREATE OR REPLACE FUNCTION imgsearch_products_words() RETURNS trigger
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $fn$
BEGIN
    NEW.words := imgsearch_product_words(NEW.name, NEW.category, NEW.description, NEW.attributes,
                                         imgsearch_text_language());
    RETURN NEW;
END
$fn$;

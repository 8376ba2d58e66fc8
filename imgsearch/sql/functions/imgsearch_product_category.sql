-- Trigger on products: a product's new category reaches its photos (and so the right category index).
CREATE OR REPLACE FUNCTION imgsearch_product_category() RETURNS trigger
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $fn$
BEGIN
    UPDATE product_images i SET category = NEW.category WHERE i.product_id = NEW.id;
    RETURN NULL;
END
$fn$;

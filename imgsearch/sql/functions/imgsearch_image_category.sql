-- Trigger on product_images: a photo carries its product's category (category indexes filter on it).
CREATE OR REPLACE FUNCTION imgsearch_image_category() RETURNS trigger
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $fn$
BEGIN
    SELECT p.category INTO NEW.category FROM products p WHERE p.id = NEW.product_id;
    RETURN NEW;
END
$fn$;

-- Undoes revision 0022: a re-embedding under way is abandoned (the current vectors were never touched).
DROP TRIGGER IF EXISTS product_images_forget_next_embedding ON product_images;
DROP FUNCTION IF EXISTS imgsearch_forget_next_embedding();
DROP TABLE IF EXISTS embedding_space_next;
ALTER TABLE product_images DROP COLUMN IF EXISTS embedding_next;

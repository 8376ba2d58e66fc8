-- Undoes upgrade_tuned_space.sql: searches go back to the raw space (what was learnt is lost).
DROP TRIGGER product_images_project ON product_images;
DROP TABLE tuned_images;
DROP TABLE search_space_rows;
DROP TABLE search_spaces;

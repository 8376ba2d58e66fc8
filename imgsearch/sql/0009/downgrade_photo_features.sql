-- Undoes upgrade_photo_features.sql: the local features are dropped (the next ingest after an upgrade computes
-- them again).
DROP TRIGGER IF EXISTS product_images_drop_stale_features ON product_images;
DROP TABLE IF EXISTS photo_features;

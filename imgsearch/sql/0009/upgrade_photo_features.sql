-- Local features of every photo, for verifying that a shopper's photo shows this very product
-- (imgsearch/local_features.py). One row per photo, written by ingestion; a photo without a row (ingested
-- before revision 0009, or whose pixels gave no keypoint) is simply never verified.
-- Run by revision 0009 inside imgsearch's schema (the first of the search_path).

CREATE TABLE photo_features (
    image_id bigint PRIMARY KEY REFERENCES product_images (id) ON DELETE CASCADE,
    -- how the features were made (imgsearch.local_features.EXTRACTOR): features of another extractor are not
    -- compared with a query's, and the next ingest computes them again
    extractor text NOT NULL,
    -- size of the pixels the keypoints are placed in (the photo scaled to a longer side of at most 640)
    width integer NOT NULL,
    height integer NOT NULL,
    -- keypoint coordinates, two little-endian uint16 each (1/16 pixel), strongest keypoint first
    points bytea NOT NULL,
    -- SIFT descriptors, 128 bytes each, in the same order
    descriptors bytea NOT NULL,
    CONSTRAINT ck_photo_features_size CHECK (width > 0 AND height > 0),
    CONSTRAINT ck_photo_features_keypoints CHECK (
        octet_length(descriptors) % 128 = 0 AND octet_length(points) * 32 = octet_length(descriptors)
    )
);
-- Descriptors are near-random bytes that compression cannot shrink: stored as they are, read without
-- decompressing.
ALTER TABLE photo_features ALTER COLUMN points SET STORAGE EXTERNAL;
ALTER TABLE photo_features ALTER COLUMN descriptors SET STORAGE EXTERNAL;

CREATE TRIGGER product_images_drop_stale_features AFTER UPDATE OF embedding ON product_images
    FOR EACH ROW EXECUTE FUNCTION imgsearch_drop_stale_features();

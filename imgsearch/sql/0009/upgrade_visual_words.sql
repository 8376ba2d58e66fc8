-- Visual words (imgsearch/visual_words.py): a vocabulary of quantised local descriptors learnt from the
-- catalogue's own photo_features, and an inverted index of every photo's words, so that a search by photo can
-- propose the products that share the most words with it (a second candidate source beside the global vector).
-- Run by revision 0009 inside imgsearch's schema (the first of the search_path), after upgrade_photo_features.

-- Every vocabulary learnt (imgsearch.visual_words.build); at most one is active, the one searches use. A new one
-- is filled while the old one still answers, then takes its place.
CREATE TABLE visual_vocabularies (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- the local features it quantises (imgsearch.local_features.EXTRACTOR)
    extractor text NOT NULL,
    -- two levels: coarse_cells centroids, each split into fine_words; word = cell * fine_words + fine
    coarse_cells integer NOT NULL,
    fine_words integer NOT NULL,
    -- what it was learnt from, and the photos indexed when it was activated (the idf's floor)
    descriptors bigint NOT NULL,
    photos bigint NOT NULL DEFAULT 0,
    -- the centroids of RootSIFT descriptors, little-endian float16: (coarse_cells, 128) and
    -- (coarse_cells, fine_words, 128)
    coarse bytea NOT NULL,
    fine bytea NOT NULL,
    active boolean NOT NULL DEFAULT false,
    CONSTRAINT ck_visual_vocabularies_shape CHECK (
        coarse_cells > 0 AND fine_words > 0 AND descriptors >= 0 AND photos >= 0
        AND octet_length(coarse) = coarse_cells * 256 AND octet_length(fine) = coarse_cells * fine_words * 256
    )
);
CREATE UNIQUE INDEX ux_visual_vocabularies_active ON visual_vocabularies (active) WHERE active;
ALTER TABLE visual_vocabularies ALTER COLUMN coarse SET STORAGE EXTERNAL;
ALTER TABLE visual_vocabularies ALTER COLUMN fine SET STORAGE EXTERNAL;

-- A photo's words under one vocabulary: how many distinct words it has (a score's normalisation). Gone with the
-- photo's features (and so with the photo), or with its vocabulary.
CREATE TABLE visual_word_photos (
    image_id bigint NOT NULL REFERENCES photo_features (image_id) ON DELETE CASCADE,
    vocabulary_id integer NOT NULL REFERENCES visual_vocabularies (id) ON DELETE CASCADE,
    words integer NOT NULL,
    PRIMARY KEY (image_id, vocabulary_id),
    CONSTRAINT ck_visual_word_photos_words CHECK (words > 0)
);
CREATE INDEX ix_visual_word_photos_vocabulary ON visual_word_photos (vocabulary_id);

-- The inverted index: one row per word and photo. The primary key answers "which photos have these words" by an
-- index-only scan (16 bytes of key per posting); the image_id index (deduplicated: one entry per photo's
-- postings) serves the cascade when a photo goes.
CREATE TABLE visual_word_postings (
    vocabulary_id integer NOT NULL,
    word integer NOT NULL,
    image_id bigint NOT NULL,
    PRIMARY KEY (vocabulary_id, word, image_id),
    CONSTRAINT fk_visual_word_postings_photo FOREIGN KEY (image_id, vocabulary_id)
        REFERENCES visual_word_photos (image_id, vocabulary_id) ON DELETE CASCADE,
    CONSTRAINT ck_visual_word_postings_word CHECK (word >= 0)
);
CREATE INDEX ix_visual_word_postings_image ON visual_word_postings (image_id);

-- Features rewritten in place (a new picture, another extractor) no longer have these words: they go, and the
-- next assignment (imgsearch.visual_words) writes the new ones.
CREATE TRIGGER photo_features_forget_visual_words AFTER UPDATE OF extractor, descriptors ON photo_features
    FOR EACH ROW WHEN (OLD.descriptors IS DISTINCT FROM NEW.descriptors OR OLD.extractor IS DISTINCT FROM NEW.extractor)
    EXECUTE FUNCTION imgsearch_forget_visual_words();

-- How many photos have each visual word, counted when a vocabulary is activated (imgsearch.visual_words.build): a
-- search by photo takes its idf from these counts instead of aggregating every posting it reads (at 100,000 photos
-- a query's ~1,000 words have ~300,000 postings), and, where imgsearch.word_postings caps the postings read, picks
-- the query's rarest words before it reads any.
-- Run by revision 0015 inside imgsearch's schema; the counts of the vocabularies already there are made here.

CREATE TABLE visual_word_frequencies (
    vocabulary_id integer NOT NULL REFERENCES visual_vocabularies (id) ON DELETE CASCADE,
    word integer NOT NULL,
    -- photos with the word when counted (visual_vocabularies.photos photos were indexed then)
    photos bigint NOT NULL,
    PRIMARY KEY (vocabulary_id, word),
    CONSTRAINT ck_visual_word_frequencies_counts CHECK (word >= 0 AND photos > 0)
);

INSERT INTO visual_word_frequencies (vocabulary_id, word, photos)
SELECT vocabulary_id, word, count(*) FROM visual_word_postings GROUP BY vocabulary_id, word;

-- Undoes upgrade_visual_words.sql: the vocabularies and every photo's words are dropped (imgsearch.visual_words.build
-- learns them again).
DROP TRIGGER IF EXISTS photo_features_forget_visual_words ON photo_features;
DROP TABLE IF EXISTS visual_word_postings;
DROP TABLE IF EXISTS visual_word_photos;
DROP TABLE IF EXISTS visual_vocabularies;

-- Undoes upgrade_word_frequencies.sql: searches read every posting of the query's words again.
DROP TABLE IF EXISTS visual_word_frequencies;

-- Undoes upgrade_search_events.sql: the recorded events and their sums are dropped with their tables.
DROP TABLE IF EXISTS search_summaries;
DROP TABLE IF EXISTS search_event_counts;
DROP TABLE IF EXISTS search_events;

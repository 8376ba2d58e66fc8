-- Drops a category index without blocking searches or writes (outside any transaction).
DROP INDEX CONCURRENTLY IF EXISTS {index};

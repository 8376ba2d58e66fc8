-- Every HNSW index over the photos' vectors (the catalogue-wide one, the category indexes, the tuned space's and
-- their category twins) rebuilt over the vectors rounded to half precision, embedding::halfvec(512), when
-- {to_half} is true (the upgrade): half the memory and a slightly faster walk at the same recall
-- (docs/performance.md). The vectors themselves stay in full precision, and every search ranks its candidates
-- exactly on them. When {to_half} is false (the downgrade), back to indexes over the full-precision vectors.
-- Each index is built beside the old one and swapped in at the end of the transaction, so searches keep their
-- index while the new ones build (writes wait).
DO $do$
DECLARE
    to_half constant boolean := {to_half};
    r record;
BEGIN
    FOR r IN
        SELECT c.relname AS index_name, t.relname AS table_name, pg_get_expr(i.indpred, i.indrelid) AS predicate,
               obj_description(c.oid, 'pg_class') AS note
        FROM pg_index i
        JOIN pg_class c ON c.oid = i.indexrelid
        JOIN pg_class t ON t.oid = i.indrelid
        JOIN pg_am a ON a.oid = c.relam
        WHERE a.amname = 'hnsw' AND i.indisvalid AND (i.indexprs IS NULL) = to_half
          AND t.relnamespace = current_schema()::regnamespace AND t.relname IN ('product_images', 'tuned_images')
        ORDER BY t.relname, c.relname
    LOOP
        EXECUTE format('CREATE INDEX %I ON %I USING hnsw (%s) WITH (m = 16, ef_construction = 64)%s',
                       r.index_name || '_new', r.table_name,
                       CASE WHEN to_half THEN '(embedding::halfvec(512)) halfvec_cosine_ops'
                            ELSE 'embedding vector_cosine_ops' END,
                       CASE WHEN r.predicate IS NULL THEN '' ELSE ' WHERE ' || r.predicate END);
        EXECUTE format('DROP INDEX %I', r.index_name);
        EXECUTE format('ALTER INDEX %I RENAME TO %I', r.index_name || '_new', r.index_name);
        IF r.note IS NOT NULL THEN
            EXECUTE format('COMMENT ON INDEX %I IS %L', r.index_name, r.note);
        END IF;
    END LOOP;
END
$do$;

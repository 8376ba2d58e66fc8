-- A catalogue made before imgsearch had a schema of its own lives in public. Move it, with its rows, its
-- indexes (category indexes included), constraints, identity sequence and trigger, into the schema being
-- migrated (the first of the migration's search_path), and drop the old functions in public: the current ones
-- are created in the schema next. Nothing happens on a fresh install (the tables are already in place) or
-- when public holds tables that are not imgsearch's (a shop's own "products").
DO $do$
DECLARE
    target name := current_schema();
    fn regprocedure;
BEGIN
    IF target = 'public'
       OR to_regclass(format('%I.products', target)) IS NOT NULL
       OR to_regclass('public.embedding_space') IS NULL
       OR NOT EXISTS (SELECT 1 FROM pg_attribute a
                      WHERE a.attrelid = to_regclass('public.products') AND a.attname = 'image_sha256'
                        AND NOT a.attisdropped)
    THEN
        RETURN;
    END IF;
    EXECUTE format('ALTER TABLE public.products SET SCHEMA %I', target);
    EXECUTE format('ALTER TABLE public.embedding_space SET SCHEMA %I', target);
    -- The trigger on products uses this one: move it rather than drop it.
    EXECUTE format('ALTER FUNCTION public.imgsearch_touch_updated_at() SET SCHEMA %I', target);
    FOR fn IN
        SELECT p.oid::regprocedure FROM pg_proc p
        WHERE p.pronamespace = 'public'::regnamespace AND p.proname LIKE 'imgsearch\_%'
    LOOP
        EXECUTE format('DROP FUNCTION %s', fn);
    END LOOP;
END
$do$;

-- Makes {role} the owner of the schema {schema} and of everything in it (tables with their indexes and sequences,
-- free-standing sequences, views, functions), so that the maintenance that needs a table's owner (category
-- indexes built CONCURRENTLY, tuning's tables) runs as that role instead of a superuser. Run by the superuser
-- after every migration on the embedded server; objects already the role's, and an extension's own objects (the
-- vector type's functions when pgvector lives in this schema), are left alone.
DO $hand_over$
DECLARE
    target regnamespace := (SELECT oid FROM pg_namespace WHERE nspname = {schema});
    new_owner regrole := (SELECT oid FROM pg_roles WHERE rolname = {role});
    item record;
BEGIN
    IF target IS NULL OR new_owner IS NULL THEN
        RETURN;
    END IF;
    EXECUTE format('ALTER SCHEMA %s OWNER TO %s', target, new_owner);
    -- Tables first: a table takes its indexes and the sequences of its own columns along.
    FOR item IN
        SELECT c.oid::regclass AS name,
               CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END AS kind
        FROM pg_class c
        WHERE c.relnamespace = target AND c.relkind IN ('r', 'p', 'v', 'm') AND c.relowner <> new_owner
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                          AND d.deptype = 'e')
    LOOP
        EXECUTE format('ALTER %s %s OWNER TO %s', item.kind, item.name, new_owner);
    END LOOP;
    FOR item IN
        SELECT c.oid::regclass AS name
        FROM pg_class c
        WHERE c.relnamespace = target AND c.relkind = 'S' AND c.relowner <> new_owner
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                          AND d.deptype = 'e')
    LOOP
        EXECUTE format('ALTER SEQUENCE %s OWNER TO %s', item.name, new_owner);
    END LOOP;
    FOR item IN
        SELECT p.oid::regprocedure AS name
        FROM pg_proc p
        WHERE p.pronamespace = target AND p.proowner <> new_owner
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                          AND d.deptype = 'e')
    LOOP
        EXECUTE format('ALTER ROUTINE %s OWNER TO %s', item.name, new_owner);
    END LOOP;
END
$hand_over$;

-- The HTTP service's check of a key (imgsearch/keys.py): the name and scope of the active key with this SHA-256
-- digest (no row: unknown or revoked), and whether any key is active at all (the service then requires one).
-- SECURITY DEFINER: the service's reader role checks keys through this function without reading the table.
CREATE OR REPLACE FUNCTION imgsearch_api_key(digest bytea)
RETURNS TABLE (name text, scope text, any_active boolean)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path FROM CURRENT
AS $fn$
    SELECT k.name, k.scope, true FROM api_keys k WHERE k.key_sha256 = digest AND k.revoked_at IS NULL
    UNION ALL
    SELECT NULL, NULL, EXISTS (SELECT 1 FROM api_keys a WHERE a.revoked_at IS NULL)
    WHERE NOT EXISTS (SELECT 1 FROM api_keys k WHERE k.key_sha256 = digest AND k.revoked_at IS NULL);
$fn$;

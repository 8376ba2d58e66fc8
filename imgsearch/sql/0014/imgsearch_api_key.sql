-- The HTTP service's check of a key (imgsearch/keys.py): the name and scope of the active key with this SHA-256
-- digest (no row with a name: unknown, revoked or expired; expired says which), and whether any key is in use at
-- all (not revoked, expired ones included: the service then requires a key, so that keys running out never
-- opens it). SECURITY DEFINER: the service's reader role checks keys through this function without reading the
-- table.
CREATE OR REPLACE FUNCTION imgsearch_api_key(digest bytea)
RETURNS TABLE (name text, scope text, any_active boolean, expired boolean)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path FROM CURRENT
AS $fn$
    SELECT k.name, k.scope, true, false
    FROM api_keys k
    WHERE k.key_sha256 = digest AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now())
    UNION ALL
    SELECT NULL, NULL,
           EXISTS (SELECT 1 FROM api_keys a WHERE a.revoked_at IS NULL),
           EXISTS (SELECT 1 FROM api_keys e WHERE e.key_sha256 = digest AND e.revoked_at IS NULL
                   AND e.expires_at <= now())
    WHERE NOT EXISTS (
        SELECT 1 FROM api_keys k
        WHERE k.key_sha256 = digest AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now()));
$fn$;

-- Undo revision 0014: keys that have expired are revoked (as of their expiry), so that none works again; keys that
-- have not expired yet lose their expiry. The function is dropped here and its previous version put back.

UPDATE api_keys SET revoked_at = expires_at WHERE revoked_at IS NULL AND expires_at <= now();
DROP FUNCTION IF EXISTS imgsearch_api_key(bytea);
ALTER TABLE api_keys DROP CONSTRAINT ck_api_keys_expiry;
ALTER TABLE api_keys DROP COLUMN expires_at;

-- API keys that expire (imgsearch keys create --expires-in): when a key stops working by itself, for keys handed to
-- a partner or a trial. Existing keys keep working (no expiry). The check's answer gains a column, so the function
-- is dropped here and created again by the revision. Run by revision 0014 inside imgsearch's schema.

ALTER TABLE api_keys ADD COLUMN expires_at timestamptz;
ALTER TABLE api_keys ADD CONSTRAINT ck_api_keys_expiry CHECK (expires_at IS NULL OR expires_at > created_at);
DROP FUNCTION IF EXISTS imgsearch_api_key(bytea);

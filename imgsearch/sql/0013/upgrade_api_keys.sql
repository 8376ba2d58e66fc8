-- API keys of the HTTP service (imgsearch/keys.py): who may call it, with which scope. Only a SHA-256 digest of
-- each key is kept (the key is shown once, when it is made); a revoked key stays listed, with when.
-- Run by revision 0013 inside imgsearch's schema (the first of the search_path).

CREATE TABLE api_keys (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    -- search: the search endpoints; write: also the shoppers' events; admin: everything
    scope text NOT NULL,
    key_sha256 bytea NOT NULL,
    -- the key's first characters, to tell keys apart in a list
    prefix text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    CONSTRAINT uq_api_keys_name UNIQUE (name),
    CONSTRAINT uq_api_keys_key_sha256 UNIQUE (key_sha256),
    CONSTRAINT ck_api_keys_scope CHECK (scope IN ('search', 'write', 'admin')),
    CONSTRAINT ck_api_keys_name CHECK (length(name) BETWEEN 1 AND 100),
    CONSTRAINT ck_api_keys_digest CHECK (octet_length(key_sha256) = 32)
);

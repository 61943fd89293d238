-- API keys (reliability §1.6): the secret is never stored, only HMAC-SHA-256(pepper, secret);
-- `key_id` is the public part of the key, the one thing logs may carry.
CREATE TABLE api_keys (
    key_id      TEXT        PRIMARY KEY,
    name        TEXT        NOT NULL,
    env         TEXT        NOT NULL,
    secret_hash BYTEA       NOT NULL,
    scopes      TEXT[]      NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ,
    revoked_at  TIMESTAMPTZ
);

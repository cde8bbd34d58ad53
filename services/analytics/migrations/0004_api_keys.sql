-- API keys: only a SHA-256 digest of each key is kept, never the key. A change (made or
-- revoked) is announced on `api_keys_changed` with the key's id, so every replica's cache of
-- keys follows within a moment.
CREATE TABLE api_keys (
    id text PRIMARY KEY CHECK (id ~ '^key_[0-9a-f]{16}$'),
    key_digest bytea NOT NULL UNIQUE CHECK (length(key_digest) = 32),
    user_id text NOT NULL CHECK (length(user_id) BETWEEN 1 AND 256),
    segment text NOT NULL CHECK (segment IN ('standard', 'vip', 'enterprise')),
    team text NOT NULL DEFAULT '' CHECK (length(team) <= 128),
    role text NOT NULL DEFAULT '' CHECK (role IN ('', 'operator')),
    budget_micro_usd bigint NOT NULL DEFAULT 0 CHECK (budget_micro_usd BETWEEN 0 AND 1000000000000),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    revoked_at timestamptz
);
CREATE INDEX api_keys_user ON api_keys (user_id, created_at DESC);

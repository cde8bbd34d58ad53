-- A sample of the Router's decisions (router.audit), joined with their outcome in usage_events
-- by request id. The message is kept only as a SHA-256 digest unless the Router is told to keep
-- messages; then `message` holds it.
CREATE TABLE route_decisions (
    request_id text PRIMARY KEY CHECK (length(request_id) BETWEEN 1 AND 128),
    occurred_at timestamptz NOT NULL,
    rule text NOT NULL CHECK (length(rule) BETWEEN 1 AND 128),
    tier smallint NOT NULL CHECK (tier BETWEEN 1 AND 4),
    intent text NOT NULL DEFAULT '',
    intent_confidence real NOT NULL DEFAULT 0 CHECK (intent_confidence BETWEEN 0 AND 1),
    complexity text NOT NULL DEFAULT '',
    complexity_score real NOT NULL DEFAULT 0 CHECK (complexity_score BETWEEN 0 AND 1),
    segment text NOT NULL DEFAULT '',
    policy_version text NOT NULL DEFAULT '',
    reasons text[] NOT NULL DEFAULT '{}',
    message_sha256 text NOT NULL DEFAULT '' CHECK (message_sha256 ~ '^([0-9a-f]{64})?$'),
    message_chars integer NOT NULL DEFAULT 0 CHECK (message_chars >= 0),
    message text
);
CREATE INDEX route_decisions_time ON route_decisions (occurred_at);

-- One row per finished request; request_id is the idempotency key (a retried write keeps one row).
CREATE TABLE usage_events (
    request_id        text        PRIMARY KEY,
    user_id           text        NOT NULL DEFAULT '',
    segment           text        NOT NULL DEFAULT '',
    tier              smallint    NOT NULL DEFAULT 0,
    model             text        NOT NULL DEFAULT '',
    deployment        text        NOT NULL DEFAULT '',
    prompt_tokens     bigint      NOT NULL DEFAULT 0,
    completion_tokens bigint      NOT NULL DEFAULT 0,
    cost_micro_usd    bigint      NOT NULL DEFAULT 0,
    latency_us        bigint      NOT NULL DEFAULT 0,
    ttft_us           bigint,
    cached            boolean     NOT NULL DEFAULT false,
    degraded          boolean     NOT NULL DEFAULT false,
    fallback_path     text[]      NOT NULL DEFAULT '{}',
    intent            text        NOT NULL DEFAULT '',
    complexity        text        NOT NULL DEFAULT '',
    occurred_at       timestamptz NOT NULL,
    recorded_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX usage_events_occurred_at ON usage_events (occurred_at);
CREATE INDEX usage_events_user ON usage_events (user_id, occurred_at);
CREATE INDEX usage_events_segment ON usage_events (segment, occurred_at);
-- The rollup job finds what arrived since its last run by recorded_at (late events included).
CREATE INDEX usage_events_recorded_at ON usage_events (recorded_at);

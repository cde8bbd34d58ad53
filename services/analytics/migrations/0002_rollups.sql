-- Spend per minute and per hour by user, segment, tier and model, kept longer than raw events.
CREATE TABLE spend_minute (
    bucket            timestamptz NOT NULL,
    user_id           text        NOT NULL,
    segment           text        NOT NULL,
    tier              smallint    NOT NULL,
    model             text        NOT NULL,
    requests          bigint      NOT NULL,
    prompt_tokens     bigint      NOT NULL,
    completion_tokens bigint      NOT NULL,
    cost_micro_usd    bigint      NOT NULL,
    PRIMARY KEY (bucket, user_id, segment, tier, model)
);

CREATE TABLE spend_hour (LIKE spend_minute INCLUDING ALL);

-- Where each background job got to (the rollup's recorded_at watermark).
CREATE TABLE job_state (
    job        text        PRIMARY KEY,
    watermark  timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

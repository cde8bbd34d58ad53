"""RateLimit's metrics: verdicts, limits hit, and the health of the Redis counters behind them."""

from __future__ import annotations

from services.runtime import metrics

DECISIONS = metrics.counter(
    "tiermesh_ratelimit_decisions_total",
    "ShouldRateLimit answers by domain (`other` for a domain not configured) and overall code (OK or OVER_LIMIT).",
    ["domain", "code"],
)
OVER_LIMIT = metrics.counter(
    "tiermesh_ratelimit_over_limit_total",
    "Descriptors over their limit, by domain, limit name and mode (enforced, or shadow: counted, never denied).",
    ["domain", "limit", "mode"],
)
REDIS_ERRORS = metrics.counter(
    "tiermesh_ratelimit_redis_errors_total",
    "Counter round trips to Redis that failed or timed out (the verdict then follows failure_mode_deny).",
)
REDIS_DURATION = metrics.histogram(
    "tiermesh_ratelimit_redis_duration_seconds",
    "Time of the pipelined counter round trip to Redis (Envoy waits ratelimit.timeout_ms for the whole call).",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25),
)

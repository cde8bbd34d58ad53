"""Inference's metrics: what answers cost, how fast they start, and how often the safety nets catch.

Tokens and cost count what providers produced and billed (every attempt that produced tokens,
cut streams included); a cache replay costs nothing and counts only as a cache hit.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

from services.inference.breaker import CLOSED, HALF_OPEN, OPEN
from services.runtime import metrics

TIME_TO_FIRST_TOKEN = metrics.histogram(
    "tiermesh_time_to_first_token_seconds",
    "Time from a request reaching Inference to the first provider token sent on, by tier (cache hits excluded).",
    ["tier"],
    buckets=(0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0),
)
TOKENS = metrics.counter(
    "tiermesh_tokens_total",
    "Tokens billed by providers, by direction (prompt or completion) and deployment.",
    ["direction", "deployment"],
)
COST = metrics.counter(
    "tiermesh_cost_micro_usd_total",
    "Provider cost in micro-USD (1e-6 USD), by deployment.",
    ["deployment"],
)
CACHE_REQUESTS = metrics.counter(
    "tiermesh_cache_requests_total",
    "Answer cache lookups by result: hit, miss, or error (Redis down or slow: served uncached).",
    ["result"],
)
FALLBACKS = metrics.counter(
    "tiermesh_fallbacks_total",
    "Hand-overs from a deployment that could not answer to the next one of the tier (or to the default response).",
    ["tier"],
)
RETRIES = metrics.counter(
    "tiermesh_retries_total",
    "Calls to a deployment repeated after a retryable failure.",
    ["deployment"],
)
DEFAULT_RESPONSES = metrics.counter(
    "tiermesh_default_responses_total",
    "Requests answered with the configured default response because no deployment of the tier could.",
    ["tier"],
)
UNANSWERED = metrics.counter(
    "tiermesh_unanswered_total",
    "Requests that ended UNAVAILABLE: no deployment could answer and no default response is configured.",
    ["tier"],
)
BREAKER_STATE = metrics.gauge(
    "tiermesh_breaker_state",
    "Circuit breaker state by deployment: 0 closed, 1 half-open, 2 open.",
    ["deployment"],
)

DEPLOYMENT_HEALTHY = metrics.gauge(
    "tiermesh_deployment_healthy",
    "1 when the deployment's last health check passed (or it is not checked), else 0.",
    ["deployment"],
)

_STATE_VALUE = {CLOSED: 0.0, HALF_OPEN: 1.0, OPEN: 2.0}


def watch_deployments(breakers: Mapping[str, Callable[[], str]], healthy: Mapping[str, bool]) -> None:
    """Read each deployment's breaker state (`breakers`: name -> a read-only getter) and health at
    scrape time, so the gauges are never stale between calls."""
    for deployment, state in breakers.items():
        BREAKER_STATE.labels(deployment).set_function(functools.partial(_state_value, state))
        DEPLOYMENT_HEALTHY.labels(deployment).set_function(functools.partial(_healthy_value, healthy, deployment))


def _state_value(state: Callable[[], str]) -> float:
    return _STATE_VALUE.get(state(), 0.0)


def _healthy_value(healthy: Mapping[str, bool], deployment: str) -> float:
    return 1.0 if healthy.get(deployment, True) else 0.0


def billed(deployment: str, prompt_tokens: int, completion_tokens: int, cost_micro_usd: int) -> None:
    """Count what one provider attempt produced."""
    TOKENS.labels("prompt", deployment).inc(prompt_tokens)
    TOKENS.labels("completion", deployment).inc(completion_tokens)
    COST.labels(deployment).inc(cost_micro_usd)

"""Backoff with full jitter, Retry-After honoured, and a budget that caps retries' share of traffic."""

from __future__ import annotations

import random

from services.inference.retry import Backoff, RetryBudget, RetrySettings


def test_full_jitter_grows_exponentially_and_is_capped() -> None:
    backoff = Backoff(RetrySettings(base_delay_s=0.1, max_delay_s=0.5), random.Random(1))
    for retry, cap in ((1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (9, 0.5)):
        delays = [backoff.delay(retry) for _ in range(300)]
        assert all(0 <= d <= cap for d in delays)
        assert max(delays) > cap * 0.9 and min(delays) < cap * 0.1  # spread over the whole range


def test_retry_after_is_a_floor() -> None:
    backoff = Backoff(RetrySettings(base_delay_s=0.1, max_delay_s=0.5), random.Random(1))
    assert all(backoff.delay(1, retry_after_s=3.0) == 3.0 for _ in range(50))


def test_budget_keeps_retries_under_the_ratio() -> None:
    budget = RetryBudget(ratio=0.2, max_tokens=5)
    retries = 0
    for _ in range(1000):  # an outage: every request wants to retry
        budget.deposit()
        retries += budget.withdraw()
    assert retries <= 0.2 * 1000 + 5
    assert retries >= 0.2 * 1000 - 1

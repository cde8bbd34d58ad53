"""Retries for provider calls: exponential backoff with full jitter, Retry-After honoured, bounded
by the request's deadline and by a retry budget.

The budget is a token bucket shared by all requests (as in gRPC's retry throttling and
Finagle's RetryBudget): every request deposits `ratio` of a token, every retry withdraws one,
and the bucket holds at most `max_tokens`. So retries stay under `ratio` of the traffic in any
outage, while a quiet service still has a few in reserve.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from services.runtime import backoff


@dataclass(frozen=True)
class RetrySettings:
    max_attempts: int = 2  # attempts per deployment, the first included
    base_delay_s: float = 0.1
    max_delay_s: float = 2.0
    budget_ratio: float = 0.2  # retries may be at most this share of requests
    budget_max_tokens: float = 10.0


class RetryBudget:
    def __init__(self, ratio: float, max_tokens: float) -> None:
        self.ratio = ratio
        self.max_tokens = max_tokens
        self.tokens = max_tokens

    def deposit(self) -> None:
        self.tokens = min(self.max_tokens, self.tokens + self.ratio)

    def withdraw(self) -> bool:
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Backoff(backoff.Backoff):
    """The runtime's backoff with the retry settings: how long to wait before retry number
    `retry` (1 for the first), never sooner than the provider's Retry-After."""

    def __init__(self, settings: RetrySettings, rng: random.Random | None = None) -> None:
        super().__init__(settings.base_delay_s, settings.max_delay_s, rng)
        self.settings = settings

    def delay(self, retry: int, retry_after_s: float | None = None) -> float:
        return super().delay(retry, floor_s=retry_after_s)

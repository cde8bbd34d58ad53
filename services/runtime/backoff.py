"""Exponential backoff with full jitter: how every part of tiermesh waits before trying again.

The n-th wait is drawn uniformly from [0, min(max_s, base_s * 2**(n-1))] ("full jitter", so
retrying callers spread out instead of arriving together), never shorter than a floor the other
side asked for (an HTTP Retry-After). It only computes the wait: the loops that wait also check a
deadline, a retry budget or a flag, and report the delay they used, so no retry helper that sleeps
by itself fits them. The random source is injectable for tests.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, base_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self.base_s = base_s
        self.max_s = max_s
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not security

    def delay(self, attempt: int, floor_s: float | None = None) -> float:
        """The wait before retry number `attempt` (1 for the first retry)."""
        cap = min(self.max_s, self.base_s * 2 ** max(attempt - 1, 0))
        jittered = self.rng.uniform(0, cap)
        return max(jittered, floor_s) if floor_s is not None else jittered

"""Stop asking a dependency that keeps failing, for a while: after `failures` failures in a row,
`paused` holds for `pause_s`; the first call after that tries again, and a success resets.

For what can be skipped, not what must be called (the answer cache, a knowledge search): a caller
that is paused answers without it at once instead of each waiting out a timeout. The circuit
breaker of a model deployment (services.inference.breaker) is the stricter cousin: it also trips
on a failure rate and lets trials through one at a time. The clock is injectable for tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class FailurePause:
    def __init__(self, failures: int, pause_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures_to_pause = failures
        self.pause_s = pause_s
        self.clock = clock
        self.failures = 0  # in a row
        self.paused_until = 0.0

    @property
    def paused(self) -> bool:
        return self.failures >= self.failures_to_pause and self.clock() < self.paused_until

    def failed(self) -> bool:
        """Count a failure; True when it is the first of a run (a moment to say so, once)."""
        self.failures += 1
        if self.failures >= self.failures_to_pause:
            self.paused_until = self.clock() + self.pause_s
        return self.failures == 1

    def succeeded(self) -> bool:
        """Count a success; True when it ends a run of failures."""
        was_failing = self.failures > 0
        self.failures = 0
        return was_failing

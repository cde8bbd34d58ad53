"""A circuit breaker per deployment: stop calling a model that keeps failing, try it again later.

    closed ──(failure rate over the window ≥ threshold with ≥ min_calls, or N consecutive failures)──▶ open
    open ──(open period over)──▶ half_open ──(trial succeeds)──▶ closed
                                           └─(trial fails)──▶ open again, for longer

The open period doubles on each trip in a row (capped) and resets once a trial succeeds.
Half-open lets at most `half_open_trials` calls through at a time. Time comes from an injectable
clock so tests never sleep.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass(frozen=True)
class BreakerSettings:
    window_s: float = 30.0  # the sliding window the failure rate is computed over
    min_calls: int = 10  # fewer calls than this in the window never trips on rate
    failure_rate: float = 0.5  # trip when this share of the window's calls failed
    consecutive_failures: int = 5  # or when this many calls in a row failed
    open_s: float = 5.0  # first open period
    max_open_s: float = 300.0  # open periods double up to this
    half_open_trials: int = 1  # trial calls allowed at once while half-open


class CircuitBreaker:
    def __init__(self, settings: BreakerSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.state = CLOSED
        self.trips = 0  # trips in a row without a successful trial
        self.opened_at = 0.0
        self.consecutive = 0
        self.trials_in_flight = 0
        self._window: deque[tuple[float, bool]] = deque()

    @property
    def open_period_s(self) -> float:
        return float(min(self.settings.open_s * 2 ** max(self.trips - 1, 0), self.settings.max_open_s))

    def current_state(self) -> str:
        """The state now (an open breaker whose period is over reads as half-open)."""
        if self.state == OPEN and self.clock() - self.opened_at >= self.open_period_s:
            self.state = HALF_OPEN
            self.trials_in_flight = 0
        return self.state

    def observed_state(self) -> str:
        """The state now, without acting on it: safe to read from another thread (a metrics scrape)."""
        if self.state == OPEN and self.clock() - self.opened_at >= self.open_period_s:
            return HALF_OPEN
        return self.state

    def allow(self) -> bool:
        """May a call go to this deployment now? A True while half-open books a trial slot:
        the caller must report its outcome with `record`."""
        state = self.current_state()
        if state == CLOSED:
            return True
        if state == HALF_OPEN and self.trials_in_flight < self.settings.half_open_trials:
            self.trials_in_flight += 1
            return True
        return False

    def seconds_until_retry(self) -> float:
        if self.current_state() != OPEN:
            return 0.0
        return max(0.0, self.opened_at + self.open_period_s - self.clock())

    def _prune(self, now: float) -> None:
        horizon = now - self.settings.window_s
        while self._window and self._window[0][0] < horizon:
            self._window.popleft()

    def _trip(self, now: float) -> None:
        self.state = OPEN
        self.trips += 1
        self.opened_at = now
        self.trials_in_flight = 0
        self._window.clear()
        self.consecutive = 0

    def record(self, ok: bool) -> None:
        """Report the outcome of a call that `allow` let through."""
        now = self.clock()
        state = self.current_state()
        if state == HALF_OPEN:
            self.trials_in_flight = max(0, self.trials_in_flight - 1)
            if ok:
                self.state, self.trips, self.consecutive = CLOSED, 0, 0
                self._window.clear()
            else:
                self._trip(now)
            return
        if state == OPEN:
            return  # a call that started before the trip; the trip already counted
        self._window.append((now, ok))
        self._prune(now)
        self.consecutive = 0 if ok else self.consecutive + 1
        failures = sum(1 for _, good in self._window if not good)
        calls = len(self._window)
        rate_tripped = calls >= self.settings.min_calls and failures / calls >= self.settings.failure_rate
        if self.consecutive >= self.settings.consecutive_failures or rate_tripped:
            self._trip(now)

    def release(self) -> None:
        """Give back a half-open trial slot without an outcome (the caller was cancelled)."""
        if self.state == HALF_OPEN:
            self.trials_in_flight = max(0, self.trials_in_flight - 1)

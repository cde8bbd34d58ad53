"""Circuit breaker: trips on failure rate or a run of failures, rejects while open, half-opens
for a bounded number of trials, and stays open longer each time a trial fails."""

from __future__ import annotations

from services.inference.breaker import CLOSED, HALF_OPEN, OPEN, BreakerSettings, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(**kw: float) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    settings = BreakerSettings(**{"min_calls": 4, "failure_rate": 0.5, "consecutive_failures": 3, "open_s": 10, **kw})  # type: ignore[arg-type]
    return CircuitBreaker(settings, clock), clock


def test_opens_after_consecutive_failures_and_rejects_without_calling() -> None:
    b, _ = breaker()
    for _ in range(2):
        assert b.allow()
        b.record(False)
    assert b.current_state() == CLOSED
    assert b.allow()
    b.record(False)
    assert b.current_state() == OPEN
    assert not b.allow() and not b.allow()
    assert b.seconds_until_retry() == 10


def test_opens_on_failure_rate_only_with_enough_calls() -> None:
    b, clock = breaker(consecutive_failures=100)
    for ok in (True, False, True):
        b.record(ok)
        clock.now += 1
    assert b.current_state() == CLOSED  # 1 of 3 failed, and 3 < min_calls
    b.record(False)
    assert b.current_state() == OPEN  # 2 of 4 failed = 50%


def test_old_calls_leave_the_sliding_window() -> None:
    b, clock = breaker(consecutive_failures=100, window_s=30)
    b.record(False)
    b.record(False)
    clock.now += 31
    b.record(True)
    b.record(True)
    assert b.current_state() == CLOSED  # the two failures are out of the window


def test_half_open_trial_success_closes() -> None:
    b, clock = breaker()
    for _ in range(3):
        b.record(False)
    clock.now += 10
    assert b.current_state() == HALF_OPEN
    assert b.allow()
    assert not b.allow()  # one trial at a time
    b.record(True)
    assert b.current_state() == CLOSED
    assert b.trips == 0


def test_half_open_trial_failure_reopens_for_longer_each_time() -> None:
    b, clock = breaker(max_open_s=35)
    for _ in range(3):
        b.record(False)
    periods = []
    for _ in range(4):
        periods.append(b.seconds_until_retry())
        clock.now += b.seconds_until_retry()
        assert b.allow()
        b.record(False)
    assert periods == [10, 20, 35, 35]


def test_cancelled_trial_gives_its_slot_back() -> None:
    b, clock = breaker()
    for _ in range(3):
        b.record(False)
    clock.now += 10
    assert b.allow()
    b.release()
    assert b.allow()

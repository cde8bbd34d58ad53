"""The benchmarks' load generator measures what a caller would see: an open loop counts the time a
chat waited behind a stalled gateway (no coordinated omission), failures are counted rather than
timed, and percentiles come from the whole window."""

from __future__ import annotations

import asyncio
import os
import time

from bench.load import closed_loop, cpu_seconds, open_loop
from bench.stats import Histogram


class Gateway:
    """A stand-in gateway in this process: answers after `delay_s`, one chat at a time (a lock),
    and fails the chats whose number is in `failing`."""

    def __init__(self, delay_s: float, failing: frozenset[int] = frozenset()) -> None:
        self.delay_s = delay_s
        self.failing = failing
        self.lock = asyncio.Lock()
        self.served = 0

    async def __call__(self, n: int) -> float:
        async with self.lock:
            await asyncio.sleep(self.delay_s)
            if n in self.failing:
                raise RuntimeError(f"chat {n} failed")
            self.served += 1
            return time.perf_counter()


async def test_open_loop_latency_includes_the_time_spent_queued_behind_a_slow_gateway() -> None:
    # 10 ms per chat, one at a time, offered 200 chats/s: the queue grows by 1 every 10 ms, so the
    # last chats wait far longer than 10 ms. A closed loop would report ~10 ms for every chat.
    gateway = Gateway(0.010)
    r = await open_loop(gateway, 200, 0.5, {}, warmup_s=0.0, gateway="test", scenario="stall", transport="none")
    assert r.chats == 100 and r.errors == 0
    assert r.whole_ms["p50"] > 100  # half the chats waited for more than ten others
    assert r.whole_ms["max"] > 400
    assert r.throughput < 120  # the gateway does 100/s, whatever was offered


async def test_open_loop_counts_from_when_a_chat_was_due_not_when_it_could_be_sent() -> None:
    # Chat 10 stalls the whole process for 200 ms: the chats due meanwhile (about 20 at 100/s)
    # are sent late, and that lateness is part of what their callers would have waited.
    async def chat(n: int) -> float:
        if n == 10:
            time.sleep(0.2)
        await asyncio.sleep(0.001)
        return time.perf_counter()

    r = await open_loop(chat, 100, 0.6, {}, warmup_s=0.0, gateway="test", scenario="stall", transport="none")
    assert r.chats == 60
    assert r.whole_ms["p90"] > 50  # over a tenth of the chats were due during the stall
    assert r.first_token_ms["max"] > 150


async def test_closed_loop_counts_failures_apart_from_latency_and_throughput() -> None:
    gateway = Gateway(0.002, failing=frozenset(range(0, 1000, 5)))
    r = await closed_loop(
        gateway, 4, 0.3, {"self": os.getpid()}, warmup_s=0.05, gateway="test", scenario="failing", transport="none"
    )
    assert r.errors > 0 and r.chats > 0 and r.throughput > 0
    assert abs(r.errors / (r.errors + r.chats) - 0.2) < 0.1  # one chat in five fails
    assert r.error_sample.startswith("RuntimeError: chat ")
    assert r.whole_ms["p50"] >= 2.0  # each answered chat took at least the gateway's 2 ms
    assert set(r.cpu_ms) == {"self"}  # CPU per chat for each process asked about


def test_histogram_percentiles_are_within_three_significant_digits() -> None:
    h = Histogram()
    for i in range(1, 1001):
        h.record(i / 1000)  # 1 ms .. 1000 ms
    assert abs(h.ms(50) - 500) <= 0.5
    assert abs(h.ms(99) - 990) <= 1.0
    assert h.summary()["max"] >= 999


def test_cpu_seconds_grows_with_work_done() -> None:
    before = cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:
        pass
    # /proc reports whole clock ticks (10 ms): 0.2 s of work reads as at least 0.18 s.
    assert cpu_seconds(os.getpid()) - before >= 0.18

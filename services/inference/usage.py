"""Sends every finished request's usage to Analytics, off the user's stream.

`report` only appends to a bounded queue; a background sender ships batches with RecordUsage.
When Analytics is down, slow or full (RESOURCE_EXHAUSTED), the batch stays queued and is retried
with backoff; the request id makes retries safe (Analytics keeps one row per request). Only when
the queue itself is full is an event dropped, and never silently: it is logged with its
content and counted. What is still queued at shutdown is saved to a spill file and sent at the
next start.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
from collections import deque
from typing import Any

import grpc
from opentelemetry import context as otel_context
from tiermesh.analytics.v1 import analytics_service_pb2 as apb
from tiermesh.analytics.v1 import analytics_service_pb2_grpc as apb_grpc

from services.runtime import config, metrics
from services.runtime import spill as spill_file

log = logging.getLogger("tiermesh.inference")

USAGE_QUEUED = metrics.gauge("tiermesh_usage_queue_events", "Usage events waiting to be sent to Analytics.")
USAGE_DROPPED = metrics.counter(
    "tiermesh_usage_events_dropped_total", "Usage events dropped because the queue to Analytics was full."
)

MAX_BATCH = 500
SEND_TIMEOUT_S = 5.0


class UsageReporter:
    def __init__(self, target: str, capacity: int = 50_000, retry_max_s: float = 5.0, spill_path: str = "") -> None:
        self.target = target
        self.spill_path = spill_path
        self.failing = False
        self.capacity = capacity
        self.retry_max_s = retry_max_s
        self.queue: deque[tuple[apb.UsageEvent, Any]] = deque()
        self.dropped = 0
        self.sent = 0
        self._wake = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        self._channel: grpc.aio.Channel | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        USAGE_QUEUED.set_function(lambda: len(self.queue))
        for event in load_spill(self.spill_path):
            self.report(event)
        self._channel = grpc.aio.insecure_channel(self.target, options=config.QUICK_RECONNECT)
        self._task = asyncio.create_task(self._run(), name="usage-reporter")

    def report(self, event: apb.UsageEvent) -> None:
        """Queue an event; never blocks and never raises."""
        if len(self.queue) >= self.capacity:
            self.dropped += 1
            USAGE_DROPPED.inc()
            log.error(
                "usage queue full: event not recorded",
                extra={"usage_event": str(event).replace("\n", " ")[:2000], "dropped": self.dropped},
            )
            return
        # The trace this request belongs to travels with its event, so the RecordUsage call that
        # carries it shows up in the request's trace.
        self.queue.append((event, otel_context.get_current()))
        self._empty.clear()
        self._wake.set()

    async def _run(self) -> None:
        assert self._channel is not None
        stub = apb_grpc.AnalyticsServiceStub(self._channel)
        failures = 0
        while True:
            if not self.queue:
                self._empty.set()
                self._wake.clear()
                await self._wake.wait()
            batch = [self.queue[i] for i in range(min(MAX_BATCH, len(self.queue)))]
            token = otel_context.attach(batch[0][1])
            try:
                await stub.RecordUsage(apb.RecordUsageRequest(events=[e for e, _ in batch]), timeout=SEND_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    # Analytics will never take this batch: log it whole rather than retry forever.
                    log.error(
                        "usage refused by analytics",
                        extra={"error": exc.details(), "events": [str(e).replace("\n", " ") for e, _ in batch]},
                    )
                    for _ in batch:
                        self.queue.popleft()
                    continue
                failures += 1
                self.failing = True
                if failures == 1:
                    log.warning("analytics unavailable; usage queued", extra={"code": exc.code().name})
                delay = min(self.retry_max_s, 0.1 * 2**failures)
                await asyncio.sleep(random.uniform(delay / 2, delay))  # noqa: S311 - jitter
                continue
            finally:
                otel_context.detach(token)
            if failures:
                log.info("analytics reachable again", extra={"queued": len(self.queue)})
            failures = 0
            self.failing = False
            for _ in batch:
                self.queue.popleft()
            self.sent += len(batch)

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Give queued events a last chance to leave; what cannot leave is saved to the spill
        file (sent at the next start), or logged whole when there is no spill file."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._empty.wait(), min(timeout_s, 1.0) if self.failing else timeout_s)
        if self._task is not None:
            self._task.cancel()
        if self.queue:
            events = [e for e, _ in self.queue]
            if self.spill_path:
                spill(self.spill_path, events)
                log.error(
                    "analytics unreachable at shutdown: usage saved to the spill file",
                    extra={"events": len(events), "path": self.spill_path},
                )
            else:
                log.error(
                    "usage not delivered at shutdown", extra={"events": [str(e).replace("\n", " ") for e in events]}
                )
            self.queue.clear()
        if self._channel is not None:
            await self._channel.close(None)


def spill(path: str, events: list[apb.UsageEvent]) -> None:
    spill_file.append(path, (base64.b64encode(e.SerializeToString()).decode() for e in events))


def load_spill(path: str) -> list[apb.UsageEvent]:
    """Events saved by an earlier shutdown (queued once)."""
    events = [apb.UsageEvent.FromString(base64.b64decode(line)) for line in spill_file.take(path)]
    if events:
        log.info("usage from the spill file queued for analytics", extra={"events": len(events)})
    return events

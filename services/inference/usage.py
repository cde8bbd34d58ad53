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
from collections import deque
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from opentelemetry import context as otel_context
from tiermesh.analytics.v1 import analytics_service_pb2 as apb
from tiermesh.analytics.v1 import analytics_service_pb2_grpc as apb_grpc

from services.runtime import metrics
from services.runtime import spill as spill_file
from services.runtime.backoff import Backoff

log = logging.getLogger("tiermesh.inference")

USAGE_QUEUED = metrics.gauge("tiermesh_usage_queue_events", "Usage events waiting to be sent to Analytics.")
USAGE_DROPPED = metrics.counter(
    "tiermesh_usage_events_dropped_total", "Usage events dropped because the queue to Analytics was full."
)

MAX_BATCH = 500
SEND_TIMEOUT_S = 5.0


class UsageReporter:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        capacity: int = 50_000,
        retry_max_s: float = 5.0,
        spill_path: str = "",
        linger_s: float = 0.0,
    ) -> None:
        self._channel = channel
        self.linger_s = linger_s
        self.spill_path = spill_path
        self.failing = False
        self.capacity = capacity
        self.backoff = Backoff(0.1, retry_max_s)
        self.queue: deque[tuple[apb.UsageEvent, Any]] = deque()
        self.dropped = 0
        self.sent = 0
        self._wake = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        USAGE_QUEUED.set_function(lambda: len(self.queue))
        for event in load_spill(self.spill_path):
            self.report(event)
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
        stub: apb_grpc.AnalyticsServiceAsyncStub = apb_grpc.AnalyticsServiceStub(self._channel)
        failures = 0
        while True:
            if not self.queue:
                self._empty.set()
                self._wake.clear()
                await self._wake.wait()
                if self.linger_s:
                    await asyncio.sleep(self.linger_s)  # events of requests ending meanwhile go along
            batch = [self.queue[i] for i in range(min(MAX_BATCH, len(self.queue)))]
            token = otel_context.attach(batch[0][1])
            try:
                refused = await self._send(stub, [e for e, _ in batch])
            except grpc.aio.AioRpcError as exc:
                failures += 1
                self.failing = True
                if failures == 1:
                    log.warning("analytics unavailable; usage queued", extra={"code": exc.code().name})
                await asyncio.sleep(self.backoff.delay(failures))
                continue
            finally:
                otel_context.detach(token)
            if failures:
                log.info("analytics reachable again", extra={"queued": len(self.queue)})
            failures = 0
            self.failing = False
            for _ in batch:
                self.queue.popleft()
            self.sent += len(batch) - refused

    async def _send(self, stub: apb_grpc.AnalyticsServiceAsyncStub, events: list[apb.UsageEvent]) -> int:
        """Send a batch; returns how many events Analytics refused as invalid. A refused batch is
        split until the invalid events are alone: those are logged whole (Analytics will never take
        them), the rest are recorded. Any other error is raised, for the batch to be retried."""
        try:
            await stub.RecordUsage(apb.RecordUsageRequest(events=events), timeout=SEND_TIMEOUT_S)
            return 0
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            if len(events) > 1:
                half = len(events) // 2
                return await self._send(stub, events[:half]) + await self._send(stub, events[half:])
            log.error("usage event refused by analytics", extra={"error": exc.details(), "event": str(events[0])})
            return 1

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
        await self._channel.close(None)


def spill(path: str, events: list[apb.UsageEvent]) -> None:
    spill_file.append(path, (base64.b64encode(e.SerializeToString()).decode() for e in events))


def load_spill(path: str) -> list[apb.UsageEvent]:
    """Events saved by an earlier shutdown (queued once); a line that does not decode is logged
    and skipped rather than stopping the start."""
    events = []
    for line in spill_file.take(path):
        try:
            events.append(apb.UsageEvent.FromString(base64.b64decode(line, validate=True)))
        except (ValueError, DecodeError) as exc:
            log.error("unreadable line in the usage spill file skipped", extra={"error": str(exc), "line": line[:2000]})
    if events:
        log.info("usage from the spill file queued for analytics", extra={"events": len(events)})
    return events

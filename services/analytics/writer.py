"""The write path: accepted usage events wait in a bounded buffer until PostgreSQL has them.

`accept` is all or nothing: either every event of a request goes into the buffer or, when it
would overflow, none does and the producer gets RESOURCE_EXHAUSTED (never a silent drop). A
flusher writes batches; when PostgreSQL is unreachable it keeps the batch and retries with
backoff while accepting continues; a client-side failure is retried the same way. A batch the
server itself keeps refusing goes to a dead-letter file rather than blocking everything behind
it. On shutdown the buffer is flushed; what PostgreSQL cannot take in time is spilled to a local
file and written at the next start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from services.analytics import db
from services.analytics import metrics as m
from services.runtime import spill as spill_file
from services.runtime.errors import ResourceExhausted

log = logging.getLogger("tiermesh.analytics")

Written = Callable[[Sequence[db.Row]], Awaitable[None]]

# What a lost or refused connection looks like; anything else is a bug and is logged as one.
CONNECTION_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.ConnectionFailureError,
    asyncpg.InternalClientError,  # e.g. a connection cut mid-COPY, left "in another operation"
)


class UsageWriter:
    def __init__(
        self,
        pool: Callable[[], Awaitable[asyncpg.Pool]],
        capacity: int,
        batch_size: int,
        flush_interval_s: float = 0.05,
        retry_max_s: float = 2.0,
        on_written: Written | None = None,
        dead_letter_path: str = "",
    ) -> None:
        self._pool = pool
        self.capacity = capacity
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.retry_max_s = retry_max_s
        self.on_written = on_written
        self.dead_letter_path = dead_letter_path or "analytics-rejected.jsonl"
        self.buffer: deque[db.Row] = deque()
        self.written = 0  # rows new to the database since start
        self.database_error = ""
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        return len(self.buffer)

    def accept(self, rows: Sequence[db.Row]) -> int:
        free = self.capacity - len(self.buffer)
        if len(rows) > free:
            m.REFUSED.inc(len(rows))
            raise ResourceExhausted(
                f"the usage write buffer has room for {free} of the {len(rows)} events sent "
                f"({len(self.buffer)} are waiting for the database): none were accepted; retry shortly"
            )
        self.buffer.extend(rows)
        m.ACCEPTED.inc(len(rows))
        self._idle.clear()
        self._wake.set()
        return len(rows)

    def start(self) -> None:
        m.BUFFER_CAPACITY.set(self.capacity)
        m.BUFFER_DEPTH.set_function(lambda: len(self.buffer))  # read at scrape time
        self._task = asyncio.create_task(self._run(), name="usage-writer")

    async def _run(self) -> None:
        failures = refusals = 0
        while True:
            if not self.buffer:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                if self.flush_interval_s:
                    await asyncio.sleep(self.flush_interval_s)  # let a burst gather into one batch
            batch = [self.buffer[i] for i in range(min(self.batch_size, len(self.buffer)))]
            try:
                pool = await self._pool()
                async with pool.acquire() as conn:
                    new = await db.insert_batch(conn, batch)
            except CONNECTION_ERRORS as exc:
                failures += 1
                m.DATABASE_ERRORS.inc()
                if not self.database_error:
                    log.warning("database unreachable; buffering usage", extra={"error": str(exc)[:300]})
                self.database_error = f"{type(exc).__name__}: {exc}"[:300]
                delay = min(self.retry_max_s, 0.05 * 2**failures)
                await asyncio.sleep(random.uniform(delay / 2, delay))  # noqa: S311 - jitter, not security
                continue
            except asyncpg.PostgresError as exc:
                # The server refused the batch itself (not the connection). Retried a few times in
                # case it is passing; then set aside in the dead-letter file, never dropped, so
                # one bad batch cannot block every later event.
                refusals += 1
                if refusals < 3:
                    log.warning("usage batch refused; retrying", extra={"error": str(exc)[:300]})
                    await asyncio.sleep(0.2 * refusals)
                    continue
                spill(self.dead_letter_path, batch)
                log.error(
                    "usage batch refused by the database: saved to the dead-letter file",
                    extra={"error": str(exc)[:300], "rows": len(batch), "path": self.dead_letter_path},
                )
                for _ in batch:
                    self.buffer.popleft()
                refusals = 0
                continue
            except Exception as exc:
                # A client-side failure (a connection left mid-operation, a pool glitch): the batch
                # stays first in line and is tried again.
                failures += 1
                log.warning("usage batch not written; retrying", extra={"error": f"{type(exc).__name__}: {exc}"[:300]})
                await asyncio.sleep(min(self.retry_max_s, 0.05 * 2**failures))
                continue
            if self.database_error:
                log.info("database reachable again; usage written", extra={"buffered": len(self.buffer)})
            self.database_error = ""
            failures = refusals = 0
            for _ in batch:
                self.buffer.popleft()
            self.written += new
            m.WRITTEN.inc(new)
            if self.on_written is not None:
                await self.on_written(batch)

    async def flush(self, timeout_s: float) -> bool:
        """Wait until the buffer is empty; False when it is not within the timeout."""
        if not self.buffer:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def stop(self, timeout_s: float, spill_path: str) -> None:
        # With the database down, waiting out the whole timeout would only delay the spill (and
        # could outlast the orchestrator's grace period): give it a moment, then spill.
        flushed = await self.flush(timeout_s if not self.database_error else min(timeout_s, 1.0))
        if self._task is not None:
            self._task.cancel()
        if not flushed and self.buffer:
            spill(spill_path, list(self.buffer))
            log.error(
                "database unreachable at shutdown: buffered usage saved to the spill file",
                extra={"rows": len(self.buffer), "path": spill_path},
            )
            self.buffer.clear()


def _encode(row: db.Row) -> list[Any]:
    return [v.isoformat() if isinstance(v, datetime) else v for v in row]


def spill(path: str, rows: Sequence[db.Row]) -> None:
    spill_file.append(path, (json.dumps(_encode(row), ensure_ascii=False) for row in rows))


def load_spill(path: str) -> list[db.Row]:
    """Rows saved by an earlier shutdown (loaded once)."""
    occurred = db.COLUMNS.index("occurred_at")
    rows: list[db.Row] = []
    for line in spill_file.take(path):
        values = json.loads(line)
        values[occurred] = datetime.fromisoformat(values[occurred])
        rows.append(tuple(values))
    return rows

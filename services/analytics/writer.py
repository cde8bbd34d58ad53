"""The write path: accepted usage events wait in a bounded buffer until PostgreSQL has them.

`accept` is all or nothing: either every event of a request goes into the buffer or, when it
would overflow, none does and the producer gets RESOURCE_EXHAUSTED (never a silent drop). A
flusher writes batches. What happens when a batch is not written depends on why:

- the database is unreachable, or refuses for a reason of its own (a lock, a full disk, a
  missing permission): the batch stays first in line and is retried with backoff, while
  accepting continues;
- the data itself is refused (a value the column cannot hold, a constraint): the batch is split
  in halves, and halves again, until the events the database refuses are alone; each of those
  goes to the dead-letter file with the reason, and every other event is written. No single
  event, accepted or replayed from a spill file, can stop the others being written.

A writer that has not made progress for `stall_after_s` while events wait says so (`stalled`),
in the health status and in `tiermesh_analytics_writer_stalled`. On shutdown the buffer is
flushed; what PostgreSQL cannot take in time is spilled to a local file and written at the next
start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg

from services.analytics import db
from services.analytics import metrics as m
from services.runtime import spill as spill_file
from services.runtime.backoff import Backoff
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

# SQLSTATE classes that blame the rows, not the database: data exceptions (a value out of a
# column's range, bad text), integrity constraints, and program limits (an index entry too big).
DATA_ERROR_CLASSES = ("22", "23", "54")
# Columns added since spill files were first written (client_request_id, team), each text that
# defaults to "": a spill line from before them is still a row.
SPILL_ADDED = 2


def is_data_error(exc: BaseException) -> bool:
    """Did the database (or the driver, encoding a value for it) refuse the rows themselves?"""
    if isinstance(exc, asyncpg.PostgresError):
        return str(getattr(exc, "sqlstate", "") or "")[:2] in DATA_ERROR_CLASSES
    # asyncpg encodes each value for its column before sending: a number out of the column's
    # range, a value of the wrong type or a row of the wrong length (its client-side DataError
    # is a ValueError too).
    return isinstance(exc, (OverflowError, TypeError, ValueError, UnicodeError, IndexError))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


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
        stall_after_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self.capacity = capacity
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.backoff = Backoff(0.05, retry_max_s)
        self.on_written = on_written
        self.dead_letter_path = dead_letter_path or "analytics-rejected.jsonl"
        self.stall_after_s = stall_after_s
        self.clock = clock
        self.buffer: deque[db.Row] = deque()
        self.written = 0  # rows new to the database since start
        self.dead_lettered = 0
        self.database_error = ""  # why the last write did not happen; empty once one did
        self.last_progress = clock()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        return len(self.buffer)

    @property
    def stalled(self) -> bool:
        """Events are waiting and none has left the buffer for `stall_after_s`."""
        return bool(self.buffer) and self.clock() - self.last_progress > self.stall_after_s

    def accept(self, rows: Sequence[db.Row], *, replayed: bool = False) -> int:
        """Buffer every row or none. Rows replayed from a spill file were accepted before: they
        are taken whatever the room (refusing them now would lose them)."""
        free = self.capacity - len(self.buffer)
        if len(rows) > free and not replayed:
            m.REFUSED.inc(len(rows))
            raise ResourceExhausted(
                f"the usage write buffer has room for {free} of the {len(rows)} events sent "
                f"({len(self.buffer)} are waiting for the database): none were accepted; retry shortly"
            )
        if not self.buffer:
            self.last_progress = self.clock()  # a stall is measured from the first waiting event
        self.buffer.extend(rows)
        m.ACCEPTED.inc(len(rows))
        self._idle.clear()
        self._wake.set()
        return len(rows)

    def start(self) -> None:
        m.BUFFER_CAPACITY.set(self.capacity)
        m.BUFFER_DEPTH.set_function(lambda: len(self.buffer))  # read at scrape time
        m.WRITER_STALLED.set_function(lambda: 1.0 if self.stalled else 0.0)
        self._task = asyncio.create_task(self._run(), name="usage-writer")

    async def _run(self) -> None:
        failures = 0
        while True:
            if not self.buffer:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                if self.flush_interval_s:
                    await asyncio.sleep(self.flush_interval_s)  # let a burst gather into one batch
            batch = [self.buffer[i] for i in range(min(self.batch_size, len(self.buffer)))]
            try:
                new, refused = await self._store(batch)
            except Exception as exc:  # the database, not the rows: keep the batch first in line
                failures += 1
                await self._wait_after(exc, failures)
                continue
            if self.database_error:
                log.info("database writable again; usage written", extra={"buffered": len(self.buffer)})
            self.database_error = ""
            failures = 0
            for _ in batch:
                self.buffer.popleft()
            self.last_progress = self.clock()
            if refused:
                self._dead_letter(refused)
            self.written += new
            m.WRITTEN.inc(new)
            if self.on_written is not None:
                set_aside = {id(row) for row, _ in refused}
                await self.on_written([row for row in batch if id(row) not in set_aside])

    async def _store(self, rows: list[db.Row]) -> tuple[int, list[tuple[db.Row, str]]]:
        """Write `rows`; returns (rows new to the table, rows refused for their data with why).
        A batch refused for its data is split until each refused row is alone; anything else
        (the connection, the database's own state) is raised for the caller to retry."""
        try:
            pool = await self._pool()
            async with pool.acquire() as conn:
                return await db.insert_batch(conn, rows), []
        except Exception as exc:
            if not is_data_error(exc):
                raise
            if len(rows) == 1:
                return 0, [(rows[0], _describe(exc))]
            half = len(rows) // 2
            first_new, first_refused = await self._store(rows[:half])
            second_new, second_refused = await self._store(rows[half:])
            return first_new + second_new, first_refused + second_refused

    async def _wait_after(self, exc: Exception, failures: int) -> None:
        m.DATABASE_ERRORS.inc()
        reason = _describe(exc)
        if not self.database_error:
            if isinstance(exc, CONNECTION_ERRORS):
                log.warning("database unreachable; buffering usage", extra={"error": reason})
            else:  # reachable, but refusing writes for a reason of its own (permissions, disk, locks)
                log.warning("database refuses usage writes; buffering and retrying", extra={"error": reason})
        self.database_error = reason
        await asyncio.sleep(self.backoff.delay(failures))

    def _dead_letter(self, refused: Sequence[tuple[db.Row, str]]) -> None:
        dead_letter(
            self.dead_letter_path, [(dict(zip(db.COLUMNS, _encode(row), strict=True)), e) for row, e in refused]
        )
        self.dead_lettered += len(refused)
        m.DEAD_LETTERED.inc(len(refused))
        log.warning(
            "usage events refused by the database: set aside in the dead-letter file; the rest are written",
            extra={
                "events": len(refused),
                "request_ids": [str(row[0])[:128] for row, _ in refused[:20]],
                "error": refused[0][1],
                "path": self.dead_letter_path,
            },
        )

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


def dead_letter(path: str, entries: Sequence[tuple[Any, str]]) -> None:
    """Append one JSON object per refused event: when, why, and the event (or the raw line)."""
    at = datetime.now(UTC).isoformat()
    spill_file.append(
        path, (json.dumps({"at": at, "error": error, "event": event}, ensure_ascii=False) for event, error in entries)
    )


def load_spill(path: str, dead_letter_path: str) -> list[db.Row]:
    """Rows saved by an earlier shutdown (loaded once). A line that is not a row of the current
    shape goes to the dead-letter file instead of stopping the start."""
    occurred = db.COLUMNS.index("occurred_at")
    rows: list[db.Row] = []
    bad: list[tuple[Any, str]] = []
    for line in spill_file.take(path):
        try:
            values = json.loads(line)
            if not isinstance(values, list) or not len(db.COLUMNS) - SPILL_ADDED <= len(values) <= len(db.COLUMNS):
                raise ValueError(f"expected a list of {len(db.COLUMNS)} values")
            values.extend([""] * (len(db.COLUMNS) - len(values)))  # written before the last columns existed
            values[occurred] = datetime.fromisoformat(values[occurred])
        except (ValueError, TypeError) as exc:
            bad.append((line[:10_000], f"unreadable spill line: {_describe(exc)}"))
            continue
        rows.append(tuple(values))
    if bad:
        dead_letter(dead_letter_path, bad)
        m.DEAD_LETTERED.inc(len(bad))
        log.warning("unreadable lines in the spill file set aside", extra={"lines": len(bad), "path": dead_letter_path})
    return rows

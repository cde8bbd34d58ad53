"""Live spend: wakes WatchSpend subscribers when usage they care about is stored.

Two sources of wake-ups: this replica's own writes (at once, after commit) and PostgreSQL
LISTEN on `usage_recorded`, which carries every replica's writes. The listener reconnects on its
own when the database restarts; while it is down, local writes still wake local subscribers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from services.analytics import db

log = logging.getLogger("tiermesh.analytics")

USER, SEGMENT = db.COLUMNS.index("user_id"), db.COLUMNS.index("segment")


@dataclass(eq=False)
class Subscriber:
    user: str
    segment: str
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def wants(self, users: set[str], segments: set[str], everything: bool) -> bool:
        if everything:
            return True
        if self.user and self.user not in users:
            return False
        return not (self.segment and self.segment not in segments)


class Live:
    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.subscribers: set[Subscriber] = set()
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, user: str, segment: str) -> Subscriber:
        sub = Subscriber(user, segment)
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def notify(self, users: set[str], segments: set[str], everything: bool = False) -> None:
        for sub in self.subscribers:
            if sub.wants(users, segments, everything):
                sub.changed.set()

    async def written(self, rows: Sequence[db.Row]) -> None:
        self.notify({r[USER] for r in rows}, {r[SEGMENT] for r in rows})

    def close_all(self) -> None:
        """Wake every subscriber so its stream can end (the server is draining)."""
        self.notify(set(), set(), everything=True)

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="usage-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self.notify(*db.affected(payload))

    async def _listen(self) -> None:
        while True:
            try:
                conn = await asyncpg.connect(self.database_url, timeout=5)
            except Exception:  # unreachable: try again shortly
                await asyncio.sleep(1.0)
                continue
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _c, lost=lost: lost.set())
            try:
                await conn.add_listener(db.CHANNEL, self._on_notify)
                await lost.wait()
            except Exception as exc:  # the connection died under the listener
                log.debug("usage listener lost its connection", extra={"error": str(exc)[:200]})
            finally:
                with contextlib.suppress(Exception):
                    await conn.close(timeout=1)
            await asyncio.sleep(0.5)

"""Analytics wiring: PostgreSQL (created and migrated at start), the write buffer, live spend,
background jobs, the gRPC server and its lifecycle.

The server listens at once. It reports SERVING while PostgreSQL is reachable and migrated and the
writer makes progress; NOT_SERVING before that (it logs why, keeps trying, and still accepts usage
into its buffer) and whenever the writer has stalled (`analytics.stall_after_s`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
from tiermesh.analytics.v1 import admin_service_pb2 as admin_pb
from tiermesh.analytics.v1 import analytics_service_pb2 as pb
from tiermesh_authz.v3 import external_auth_pb2 as authz_pb

from services.analytics import config as analytics_config
from services.analytics import db
from services.analytics.config import AnalyticsConfig
from services.analytics.keys import AdminServicer, KeyCache, KeyCheck
from services.analytics.live import Live
from services.analytics.servicer import AnalyticsServicer
from services.analytics.writer import CONNECTION_ERRORS, UsageWriter, load_spill
from services.runtime import config, contract, logs, observability, tls
from services.runtime.backoff import Backoff
from services.runtime.server import Service, serve

log = logging.getLogger("tiermesh.analytics")


class Database:
    """The pool, created on first use once PostgreSQL is reachable and the schema is migrated."""

    def __init__(self, cfg: AnalyticsConfig) -> None:
        self.cfg = cfg
        self.pool_: asyncpg.Pool | None = None
        self.error = ""
        self._lock = asyncio.Lock()

    async def pool(self) -> asyncpg.Pool:
        if self.pool_ is not None:
            return self.pool_
        async with self._lock:
            if self.pool_ is None:
                try:
                    if self.cfg.create_database:
                        await db.ensure_database(self.cfg.database_url)
                    pool = await asyncpg.create_pool(
                        self.cfg.database_url, min_size=1, max_size=self.cfg.pool_size, timeout=5, command_timeout=30
                    )
                    async with pool.acquire() as conn:
                        await db.migrate(conn)
                except CONNECTION_ERRORS as exc:
                    self.error = f"PostgreSQL at {db.redact_url(self.cfg.database_url)} is unreachable: {exc}"
                    raise
                self.pool_ = pool
                self.error = ""
        assert self.pool_ is not None
        return self.pool_

    async def close(self) -> None:
        if self.pool_ is not None:
            await self.pool_.close()


async def jobs(database: Database, cfg: AnalyticsConfig) -> None:
    """Rollups and retention on a schedule; safe with several replicas (advisory locks)."""
    while True:
        await asyncio.sleep(cfg.rollup_interval_s)
        try:
            pool = await database.pool()
            async with pool.acquire() as conn:
                await db.rollup(conn)
                await db.apply_retention(
                    conn, cfg.retention_days_events, cfg.retention_days_minute, cfg.retention_days_hour
                )
        except CONNECTION_ERRORS:
            continue  # the writer already reports the outage
        except Exception:
            log.exception("background job failed")


async def main() -> None:
    tree = config.load()
    log_ = logs.setup("analytics", config.get_str(tree, "log_level", "info", where=""))
    observability.setup("analytics", tree)
    cfg = analytics_config.load(tree)
    database = Database(cfg)
    live = Live(cfg.database_url)
    writer = UsageWriter(
        database.pool,
        cfg.buffer_size,
        cfg.batch_size,
        cfg.flush_interval_s,
        cfg.retry_max_s,
        on_written=live.written,
        dead_letter_path=cfg.dead_letter_path,
        stall_after_s=cfg.stall_after_s,
    )
    spilled = load_spill(cfg.spill_path, cfg.dead_letter_path)
    if spilled:
        writer.accept(spilled, replayed=True)
        log_.info("usage from the spill file queued for the database", extra={"rows": len(spilled)})
    servicer = AnalyticsServicer(writer, live, database.pool)
    key_cache = KeyCache(cfg.database_url, database.pool)
    tasks: list[asyncio.Task[None]] = []

    async def watch(service: Service) -> None:
        """Connect (and migrate), then keep the health status on what the writer can do."""
        backoff = Backoff(0.2, 5.0)
        attempt = 0
        while True:
            try:
                await database.pool()
            except CONNECTION_ERRORS:
                log_.warning(
                    "not serving: PostgreSQL is unreachable; usage is buffered until it is",
                    extra={"reason": database.error},
                )
                attempt += 1
                await asyncio.sleep(backoff.delay(attempt))
                continue
            break
        log_.info("database ready", extra={"database": db.redact_url(cfg.database_url)})
        serving: bool | None = None
        while True:
            now_serving = not writer.stalled
            if now_serving != serving:
                await service.set_serving(now_serving)
                if serving is not None:
                    if now_serving:
                        log_.info("serving again: the usage writer makes progress")
                    else:
                        log_.error(
                            "not serving: no usage reached the database for analytics.stall_after_s",
                            extra={"buffered": writer.depth, "reason": writer.database_error},
                        )
                serving = now_serving
            await asyncio.sleep(0.5)

    async def on_start(service: Service) -> None:
        writer.start()
        live.start()
        key_cache.start()
        tasks.append(asyncio.create_task(watch(service), name="watch"))
        tasks.append(asyncio.create_task(jobs(database, cfg), name="jobs"))

    async def ready() -> bool:
        return database.pool_ is not None

    async def on_drain() -> None:
        servicer.draining.set()
        live.close_all()

    async def on_stop() -> None:
        for task in tasks:
            task.cancel()
        await writer.stop(timeout_s=10.0, spill_path=cfg.spill_path)
        await live.stop()
        await key_cache.stop()
        with contextlib.suppress(Exception):
            await database.close()

    served = contract.served(pb.DESCRIPTOR.services_by_name["AnalyticsService"], servicer)
    admin = contract.served(
        admin_pb.DESCRIPTOR.services_by_name["AdminService"], AdminServicer(database.pool, key_cache)
    )
    key_check = contract.served(authz_pb.DESCRIPTOR.services_by_name["Authorization"], KeyCheck(key_cache))
    await serve(
        "analytics",
        tree,
        log_,
        served,
        ready=ready,
        on_start=on_start,
        on_drain=on_drain,
        on_stop=on_stop,
        # Usage comes from Inference (or an operator replaying it); spend is read by the Router
        # for budgets, by operators, and through the edge by a signed-in user (their own only,
        # see servicer.spend_scope).
        callers={
            served.path("RecordUsage"): (tls.INFERENCE, tls.OPERATOR),
            served.path("GetSpend"): (tls.ROUTER, tls.OPERATOR, tls.EDGE),
            served.path("WatchSpend"): (tls.ROUTER, tls.OPERATOR, tls.EDGE),
            # Sampled route decisions come from the Router; their statistics are for operators.
            served.path("RecordDecisions"): (tls.ROUTER, tls.OPERATOR),
            served.path("GetRouteStats"): (tls.OPERATOR,),
            # API keys: made, listed and revoked by operators; checked by the edge (ext_authz).
            # Through the edge only for the operator role (checked there and in AdminServicer).
            **{admin.path(m): (tls.OPERATOR, tls.EDGE) for m in ("CreateKey", "ListKeys", "RevokeKey")},
            key_check.path("Check"): (tls.EDGE, tls.OPERATOR),
        },
        also=(admin, key_check),
    )

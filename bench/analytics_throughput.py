"""Analytics write throughput and live-spend latency against the local PostgreSQL.

Starts Analytics on a fresh database (dropped after), sends 10,000 usage events from 20
concurrent producers in batches of 100, and prints how fast they were accepted and how long
until every one was in PostgreSQL; then how long a WatchSpend subscriber waits for a new total
after RecordUsage returns. `python -m bench.analytics_throughput`.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
from tiermesh.analytics.v1 import analytics_service_pb2 as pb
from tiermesh.analytics.v1 import analytics_service_pb2_grpc as pb_grpc
from tiermesh.common.v1 import common_pb2 as c

from services.cli.mesh import start_mesh

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def event(rid: str, user: str) -> pb.UsageEvent:
    e = pb.UsageEvent(request_id=rid, user=user, tier=c.TIER_FAST, usage=c.Usage(prompt_tokens=5, cost_micro_usd=3))
    e.occurred_at.GetCurrentTime()
    return e


async def main() -> None:
    name = f"tiermesh_bench_{uuid.uuid4().hex[:8]}"
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    with tempfile.TemporaryDirectory() as tmp:
        mesh = await start_mesh(Path(tmp), ["analytics"], TIERMESH_ANALYTICS__DATABASE_URL=url)
        try:
            async with mesh.channel("analytics") as channel:
                stub = pb_grpc.AnalyticsServiceStub(channel)
                batches = [[event(f"b{i}-{j}", f"user-{j % 50}") for j in range(100)] for i in range(100)]
                queue: asyncio.Queue[list[pb.UsageEvent]] = asyncio.Queue()
                for b in batches:
                    queue.put_nowait(b)

                async def producer() -> None:
                    while not queue.empty():
                        await stub.RecordUsage(pb.RecordUsageRequest(events=queue.get_nowait()), timeout=30)

                started = time.perf_counter()
                await asyncio.gather(*(producer() for _ in range(20)))
                accepted = time.perf_counter() - started
                conn = await asyncpg.connect(url)
                while await conn.fetchval("SELECT count(*) FROM usage_events") < 10_000:
                    await asyncio.sleep(0.01)
                durable = time.perf_counter() - started
                await conn.close()
                print("analytics: 10,000 usage events, 20 producers, batches of 100")
                print(f"  accepted in {accepted * 1000:.0f} ms ({10_000 / accepted:,.0f} events/s)")
                print(f"  all in PostgreSQL after {durable * 1000:.0f} ms ({10_000 / durable:,.0f} events/s)")

                delays = []
                for i in range(20):
                    user = f"watch-{i}"
                    watch = stub.WatchSpend(pb.WatchSpendRequest(user=user))
                    await watch.read()
                    await stub.RecordUsage(pb.RecordUsageRequest(events=[event(f"w{i}", user)]), timeout=10)
                    sent = time.perf_counter()
                    await watch.read()
                    delays.append(time.perf_counter() - sent)
                    watch.cancel()
                delays.sort()
                print(
                    f"  WatchSpend update after RecordUsage: p50 {statistics.median(delays) * 1000:.0f} ms, "
                    f"max {delays[-1] * 1000:.0f} ms (20 trials)"
                )
        finally:
            await mesh.sup.stop()
            admin = await asyncpg.connect(ADMIN)
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()


if __name__ == "__main__":
    asyncio.run(main())

"""AnalyticsService against real PostgreSQL: exactly-once usage under concurrency and lost
connections, spend reports, live totals, buffering without a database, flush on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import grpc
import pytest
from tiermesh.analytics.v1 import analytics_service_pb2 as pb
from tiermesh.analytics.v1 import analytics_service_pb2_grpc as pb_grpc
from tiermesh.common.v1 import common_pb2 as c

from services.analytics import db
from services.cli import probes
from services.runtime import config
from services.runtime.server import LIVENESS
from tests.integration.mesh import Mesh, mesh_env, start_mesh
from tests.integration.test_observability import scrape, value

pytestmark = pytest.mark.integration


def event(
    request_id: str, user: str = "u", cost: int = 7, segment: int = c.SEGMENT_STANDARD, **kw: object
) -> pb.UsageEvent:
    e = pb.UsageEvent(
        request_id=request_id,
        user=user,
        segment=segment,  # type: ignore[arg-type]
        tier=c.TIER_BALANCED,
        model="sim-balanced",
        deployment="sim-balanced",
        usage=c.Usage(prompt_tokens=10, completion_tokens=20, cost_micro_usd=cost),
        intent=c.INTENT_FAQ,
        complexity=c.COMPLEXITY_LOW,
        **kw,  # type: ignore[arg-type]
    )
    e.latency.FromMilliseconds(120)
    e.time_to_first_token.FromMilliseconds(30)
    e.occurred_at.GetCurrentTime()
    return e


@pytest.fixture(scope="module")
async def analytics(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> AsyncIterator[Mesh]:
    m = await start_mesh(
        tmp_path_factory.mktemp("analytics"), ["analytics"], TIERMESH_ANALYTICS__DATABASE_URL=database_url
    )
    yield m
    await m.sup.stop()


def stub_for(mesh: Mesh) -> tuple[grpc.aio.Channel, pb_grpc.AnalyticsServiceStub]:
    channel = mesh.channel("analytics")
    return channel, pb_grpc.AnalyticsServiceStub(channel)


async def send(stub: pb_grpc.AnalyticsServiceStub, events: list[pb.UsageEvent]) -> None:
    """Send until accepted, as a producer does (a full buffer says retry; a dropped call is retried)."""
    while True:
        try:
            await stub.RecordUsage(pb.RecordUsageRequest(events=events), timeout=10)
            return
        except grpc.aio.AioRpcError as exc:
            assert exc.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE), exc
            await asyncio.sleep(0.05)


async def wait_rows(url: str, prefix: str, n: int, timeout_s: float = 60) -> tuple[int, int]:
    """(rows, cost) of events whose id starts with prefix, once there are n of them (or timeout)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    conn = await asyncpg.connect(url, server_settings={"application_name": "tiermesh-test"})
    try:
        while True:
            row = await conn.fetchrow(
                "SELECT count(*) AS n, coalesce(sum(cost_micro_usd), 0) AS cost FROM usage_events "
                "WHERE request_id LIKE $1",
                prefix + "%",
            )
            if row["n"] >= n or loop.time() > deadline:
                return int(row["n"]), int(row["cost"])
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


async def ten_thousand(stub: pb_grpc.AnalyticsServiceStub, prefix: str) -> int:
    """10,000 distinct events, 2,000 of them sent twice, by 20 concurrent producers; returns the true cost."""
    events = [event(f"{prefix}{i:05d}", user=f"user-{i % 37}", cost=i % 97 + 1) for i in range(10_000)]
    batches = [events[i : i + 100] for i in range(0, 10_000, 100)]
    batches += [random.sample(events, 100) for _ in range(20)]  # duplicates, mixed in
    random.shuffle(batches)
    queue: asyncio.Queue[list[pb.UsageEvent]] = asyncio.Queue()
    for b in batches:
        queue.put_nowait(b)

    async def producer() -> None:
        while not queue.empty():
            await send(stub, queue.get_nowait())

    await asyncio.gather(*(producer() for _ in range(20)))
    return sum(i % 97 + 1 for i in range(10_000))


async def test_ten_thousand_concurrent_events_with_duplicates_are_stored_exactly_once(
    analytics: Mesh, database_url: str
) -> None:
    prefix = f"load-{uuid.uuid4().hex[:6]}-"
    channel, stub = stub_for(analytics)
    async with channel:
        cost = await ten_thousand(stub, prefix)
    assert await wait_rows(database_url, prefix, 10_000) == (10_000, cost)
    await asyncio.sleep(0.5)  # nothing more arrives later either
    assert await wait_rows(database_url, prefix, 10_001, timeout_s=0) == (10_000, cost)


async def test_exactly_once_when_postgres_connections_are_killed_mid_run(analytics: Mesh, database_url: str) -> None:
    prefix = f"kill-{uuid.uuid4().hex[:6]}-"
    name = database_url.rsplit("/", 1)[1]
    killed = 0
    stop = asyncio.Event()

    async def killer() -> None:
        nonlocal killed
        admin = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
        try:
            while not stop.is_set():
                rows = await admin.fetch(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = $1 AND pid <> pg_backend_pid() AND application_name <> 'tiermesh-test'",
                    name,
                )
                killed += sum(1 for r in rows if r[0])
                await asyncio.sleep(0.03)
        finally:
            await admin.close()

    errors_before = value(await scrape(analytics, "analytics"), "tiermesh_analytics_database_errors_total")
    kill_task = asyncio.create_task(killer())
    channel, stub = stub_for(analytics)
    try:
        async with channel:
            cost = await ten_thousand(stub, prefix)
        rows_while_killing = await wait_rows(database_url, prefix, 10_000, timeout_s=5)
    finally:
        stop.set()
        await kill_task
    assert killed > 0, "the test killed no database connection"
    errors = value(await scrape(analytics, "analytics"), "tiermesh_analytics_database_errors_total") - errors_before
    assert errors > 0, "no write hit a killed connection"
    print(
        f"connections killed: {killed}; writes that hit one: {errors:.0f}; rows while killing: {rows_while_killing[0]}"
    )
    stored = await wait_rows(database_url, prefix, 10_000)
    assert stored == (10_000, cost), "\n".join(analytics.logs("analytics")[-40:])
    await asyncio.sleep(0.5)
    assert await wait_rows(database_url, prefix, 10_001, timeout_s=0) == (10_000, cost)


async def test_get_spend_totals_and_breakdowns(analytics: Mesh) -> None:
    tag = uuid.uuid4().hex[:6]
    a, b = f"alice-{tag}", f"bob-{tag}"
    events = [event(f"{tag}-a{i}", user=a, cost=100) for i in range(3)]
    events += [event(f"{tag}-b{i}", user=b, cost=1_000, segment=c.SEGMENT_VIP) for i in range(2)]
    channel, stub = stub_for(analytics)
    async with channel:
        await send(stub, events)
        for _ in range(100):
            spend = await stub.GetSpend(pb.GetSpendRequest(user=a), timeout=5)
            if spend.totals.requests == 3:
                break
            await asyncio.sleep(0.05)
        assert (spend.totals.requests, spend.totals.cost_micro_usd) == (3, 300)
        assert (spend.totals.prompt_tokens, spend.totals.completion_tokens) == (30, 60)
        vip = await stub.GetSpend(
            pb.GetSpendRequest(segment=c.SEGMENT_VIP, group_by=[pb.SPEND_DIMENSION_USER, pb.SPEND_DIMENSION_TIER])
        )
        by_user = {g.key: g.totals.cost_micro_usd for g in vip.groups if g.dimension == pb.SPEND_DIMENSION_USER}
        assert by_user[b] == 2_000 and a not in by_user
        tiers = {g.key for g in vip.groups if g.dimension == pb.SPEND_DIMENSION_TIER}
        assert tiers == {"2"}
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetSpend(pb.GetSpendRequest(group_by=[pb.SPEND_DIMENSION_UNSPECIFIED]))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_get_spend_in_time_buckets_by_tier_and_model(analytics: Mesh) -> None:
    """Spend over time, as the operations view charts it: one bucket per hour aligned to the
    start of the range, each with its own totals and breakdowns; empty hours are left out."""
    tag = uuid.uuid4().hex[:6]
    user = f"hourly-{tag}"
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=5)
    placed = [
        (0, 10, c.TIER_FAST, "sim-fast"),
        (0, 20, c.TIER_PREMIUM, "sim-premium"),
        (3, 40, c.TIER_FAST, "sim-fast"),
    ]
    events = []
    for i, (hour, cost, tier, model) in enumerate(placed):
        e = event(f"{tag}-h{i}", user=user, cost=cost)
        e.tier, e.model = tier, model
        e.occurred_at.FromDatetime(start + timedelta(hours=hour, minutes=5 + i))
        events.append(e)
    channel, stub = stub_for(analytics)
    async with channel:
        await send(stub, events)
        request = pb.GetSpendRequest(
            user=user, bucket_s=3600, group_by=[pb.SPEND_DIMENSION_TIER, pb.SPEND_DIMENSION_MODEL]
        )
        request.start_time.FromDatetime(start)
        for _ in range(100):
            spend = await stub.GetSpend(request, timeout=5)
            if spend.totals.requests == 3:
                break
            await asyncio.sleep(0.05)
        assert [b.start_time.ToDatetime(tzinfo=UTC) for b in spend.buckets] == [start, start + timedelta(hours=3)]
        first, later = spend.buckets
        assert (first.totals.requests, first.totals.cost_micro_usd) == (2, 30)
        assert {(g.dimension, g.key): g.totals.cost_micro_usd for g in first.groups} == {
            (pb.SPEND_DIMENSION_TIER, "4"): 20,
            (pb.SPEND_DIMENSION_TIER, "1"): 10,
            (pb.SPEND_DIMENSION_MODEL, "sim-premium"): 20,
            (pb.SPEND_DIMENSION_MODEL, "sim-fast"): 10,
        }
        assert [g.key for g in first.groups if g.dimension == pb.SPEND_DIMENSION_TIER] == ["4", "1"]  # costliest first
        assert (later.totals.requests, later.totals.cost_micro_usd) == (1, 40)
        assert sum(b.totals.cost_micro_usd for b in spend.buckets) == spend.totals.cost_micro_usd == 70
        for bad, says in ((30, "from 60 to 86400"), (60, "more than 1440")):
            wide = pb.GetSpendRequest(bucket_s=bad)
            wide.start_time.FromDatetime(start - timedelta(days=2))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetSpend(wide, timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and says in (err.value.details() or "")


async def test_spend_of_one_team_and_by_team(analytics: Mesh) -> None:
    """A team's spend is what its keys' requests cost, whichever user sent them; a team longer
    than its column holds is refused before anything is stored."""
    tag = uuid.uuid4().hex[:6]
    team = f"team-{tag}"
    events = [
        event(f"{tag}-a", user=f"ana-{tag}", cost=30, team=team),
        event(f"{tag}-b", user=f"bo-{tag}", cost=12, team=team),
        event(f"{tag}-c", user=f"ana-{tag}", cost=500),  # the same user, without the team's key
        event(f"{tag}-d", user=f"cy-{tag}", cost=7, team=f"other-{tag}"),
    ]
    channel, stub = stub_for(analytics)
    async with channel:
        await send(stub, events)
        request = pb.GetSpendRequest(team=team, group_by=[pb.SPEND_DIMENSION_USER, pb.SPEND_DIMENSION_TEAM])
        for _ in range(100):
            spend = await stub.GetSpend(request, timeout=5)
            if spend.totals.requests == 2:
                break
            await asyncio.sleep(0.05)
        assert (spend.totals.requests, spend.totals.cost_micro_usd) == (2, 42)
        assert {(g.dimension, g.key): g.totals.cost_micro_usd for g in spend.groups} == {
            (pb.SPEND_DIMENSION_USER, f"ana-{tag}"): 30,
            (pb.SPEND_DIMENSION_USER, f"bo-{tag}"): 12,
            (pb.SPEND_DIMENSION_TEAM, team): 42,
        }
        mine = await stub.GetSpend(pb.GetSpendRequest(user=f"ana-{tag}", group_by=[pb.SPEND_DIMENSION_TEAM]))
        assert {g.key: g.totals.cost_micro_usd for g in mine.groups} == {team: 30, "": 500}
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RecordUsage(pb.RecordUsageRequest(events=[event(f"{tag}-long", team="t" * 129)]), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "team" in (err.value.details() or "")


async def test_watch_spend_pushes_new_totals_as_usage_arrives(analytics: Mesh) -> None:
    user = f"watcher-{uuid.uuid4().hex[:6]}"
    channel, stub = stub_for(analytics)
    async with channel:
        call = stub.WatchSpend(pb.WatchSpendRequest(user=user))
        first = await asyncio.wait_for(call.read(), 10)
        assert first.totals.requests == 0
        await send(stub, [event(f"{user}-1", user=user, cost=250)])
        update = await asyncio.wait_for(call.read(), 10)
        assert (update.totals.requests, update.totals.cost_micro_usd) == (1, 250)
        await send(stub, [event(f"{user}-other", user="someone-else", cost=5)])  # not this watcher's
        await send(stub, [event(f"{user}-2", user=user, cost=50)])
        update = await asyncio.wait_for(call.read(), 10)
        assert (update.totals.requests, update.totals.cost_micro_usd) == (2, 300)
        call.cancel()


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (pb.UsageEvent(request_id="  "), "events[0].request_id"),
        (pb.UsageEvent(request_id="x", usage=c.Usage(cost_micro_usd=-1)), "cost_micro_usd"),
        (pb.UsageEvent(request_id="x" * 129), "events[0].request_id"),
        (pb.UsageEvent(request_id="x", tier=9), "tier"),  # type: ignore[arg-type]
    ],
)
async def test_bad_events_are_refused_and_nothing_of_the_request_is_kept(
    analytics: Mesh, database_url: str, bad: pb.UsageEvent, field: str
) -> None:
    good_id = f"good-{uuid.uuid4().hex[:8]}"
    channel, stub = stub_for(analytics)
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RecordUsage(pb.RecordUsageRequest(events=[bad, event(good_id)]), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in (err.value.details() or "")
    await asyncio.sleep(0.3)
    assert await wait_rows(database_url, good_id, 1, timeout_s=0) == (0, 0)


async def test_future_times_and_nul_characters(analytics: Mesh, database_url: str) -> None:
    channel, stub = stub_for(analytics)
    future = event("future")
    future.occurred_at.FromSeconds(future.occurred_at.seconds + 3 * 86400)
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RecordUsage(pb.RecordUsageRequest(events=[future]), timeout=5)
        assert "occurred_at" in (err.value.details() or "")
        rid = f"nul-{uuid.uuid4().hex[:6]}"
        await send(stub, [event(rid, user="ana\x00maria 😀")])
    assert (await wait_rows(database_url, rid, 1))[0] == 1
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT user_id FROM usage_events WHERE request_id = $1", rid) == "ana\ufffdmaria 😀"
    finally:
        await conn.close()


async def test_without_postgres_usage_is_buffered_refused_when_full_and_spilled_on_sigterm(
    tmp_path: Path, fresh_database_url: str
) -> None:
    closed = f"postgresql://postgres@127.0.0.1:{_closed_port()}/nowhere"
    m = await start_mesh(
        tmp_path, ["analytics"], TIERMESH_ANALYTICS__DATABASE_URL=closed, TIERMESH_ANALYTICS__BUFFER_SIZE="50"
    )
    try:
        channel, stub = stub_for(m)
        async with channel:
            health = subprocess.run(
                [str(Path(os.sys.executable).parent / "tiermesh"), "health"],
                env={**os.environ, **m.env},
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert "analytics  NOT_SERVING" in health.stdout
            assert "cannot reach PostgreSQL" in health.stdout and "nowhere" in health.stdout
            # not ready, yet alive: a liveness probe leaves it running until PostgreSQL is back
            host, health_port = config.health_endpoint(m.tree, "analytics")
            assert await probes.grpc_health(f"{host}:{health_port}", service=LIVENESS) == "SERVING"
            accepted = await stub.RecordUsage(
                pb.RecordUsageRequest(events=[event(f"spill-{i}", cost=3) for i in range(50)]), timeout=5
            )
            assert accepted.accepted == 50
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.RecordUsage(pb.RecordUsageRequest(events=[event("spill-50")]), timeout=5)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "none were accepted" in (err.value.details() or "")
        code = await m.sup.stop_part(m.sup["analytics"], grace_s=30)
        assert code == 0
        assert (tmp_path / "analytics-spill.jsonl").exists()
    finally:
        await m.sup.stop()
    # The next start, with a database, writes what was spilled.
    m2 = await start_mesh(tmp_path, ["analytics"], TIERMESH_ANALYTICS__DATABASE_URL=fresh_database_url)
    try:
        assert await wait_rows(fresh_database_url, "spill-", 50) == (50, 150)
    finally:
        await m2.sup.stop()


async def test_sigterm_flushes_the_buffer_before_exit(tmp_path: Path, fresh_database_url: str) -> None:
    m = await start_mesh(tmp_path, ["analytics"], TIERMESH_ANALYTICS__DATABASE_URL=fresh_database_url)
    try:
        channel, stub = stub_for(m)
        async with channel:
            for i in range(0, 5000, 1000):
                await send(stub, [event(f"flush-{j}", cost=2) for j in range(i, i + 1000)])
        proc = m.sup["analytics"].proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        await m.sup.stop()
    assert await wait_rows(fresh_database_url, "flush-", 5000, timeout_s=0) == (5000, 10_000)


async def test_rollups_match_raw_events_and_run_on_one_replica_at_a_time(fresh_database_url: str) -> None:
    await db.ensure_database(fresh_database_url)
    conn = await asyncpg.connect(fresh_database_url)
    other = await asyncpg.connect(fresh_database_url)
    try:
        assert await db.migrate(conn) == [
            "0001_usage_events",
            "0002_rollups",
            "0003_client_request_id",
            "0004_api_keys",
            "0005_route_decisions",
            "0006_second_opinion",
            "0007_usage_team",
        ]
        assert await db.migrate(conn) == []  # idempotent
        from datetime import UTC, datetime, timedelta

        now = datetime.now(UTC)
        rows = [
            (f"r{i}", f"u{i % 3}", "standard", 1 + i % 2, "m", "d", 1, 2, i, 1000, None, False, False, [], "faq", "low",
             now - timedelta(minutes=i % 5), "", "")
            for i in range(200)
        ]  # fmt: skip
        rows.append(
            (
                "old",
                "u0",
                "standard",
                1,
                "m",
                "d",
                1,
                1,
                5,
                1,
                None,
                False,
                False,
                [],
                "",
                "",
                now - timedelta(days=400),
                "",
                "",
            )
        )
        assert await db.insert_batch(conn, rows) == 201
        async with other.transaction():  # another replica holds the rollup lock
            await other.execute("SELECT pg_advisory_xact_lock($1)", db.ROLLUP_LOCK)
            assert await db.rollup(conn, lag_s=0) is False
        assert await db.rollup(conn, lag_s=0) is True
        for table in ("spend_minute", "spend_hour"):
            rolled = await conn.fetchrow(f"SELECT sum(requests) AS n, sum(cost_micro_usd) AS cost FROM {table}")
            raw = await conn.fetchrow("SELECT count(*) AS n, sum(cost_micro_usd) AS cost FROM usage_events")
            assert (rolled["n"], rolled["cost"]) == (raw["n"], raw["cost"])
        # A late event for a bucket already rolled up is counted at the next run.
        await db.insert_batch(
            conn, [("late", "u1", "standard", 1, "m", "d", 1, 1, 1000, 1, None, False, False, [], "", "", now, "", "")]
        )
        assert await db.rollup(conn, lag_s=0)
        assert await conn.fetchval("SELECT sum(cost_micro_usd) FROM spend_hour") == await conn.fetchval(
            "SELECT sum(cost_micro_usd) FROM usage_events"
        )
        deleted = await db.apply_retention(conn, events_days=90, minute_days=14, hour_days=800)
        assert deleted["usage_events"] == 1
        assert await conn.fetchval("SELECT count(*) FROM usage_events WHERE request_id = 'old'") == 0
    finally:
        await conn.close()
        await other.close()


def _closed_port() -> int:
    from tests.integration.mesh import free_port

    return free_port()


def test_migrate_command(tmp_path: Path, fresh_database_url: str) -> None:
    env = {**os.environ, **mesh_env(tmp_path), "TIERMESH_ANALYTICS__DATABASE_URL": fresh_database_url}
    tiermesh = str(Path(os.sys.executable).parent / "tiermesh")
    first = subprocess.run([tiermesh, "migrate"], env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    applied = "0001_usage_events, 0002_rollups, 0003_client_request_id, 0004_api_keys, 0005_route_decisions, "
    applied += "0006_second_opinion, 0007_usage_team"
    assert first.stdout.strip() == f"applied {applied}"
    again = subprocess.run([tiermesh, "migrate"], env=env, capture_output=True, text=True, timeout=60)
    assert again.stdout.strip() == "the database schema is up to date"


async def test_usage_inference_could_not_deliver_is_kept_across_its_restart(
    tmp_path: Path, fresh_database_url: str
) -> None:
    from tiermesh.inference.v1 import inference_service_pb2 as ipb
    from tiermesh.inference.v1 import inference_service_pb2_grpc as ipb_grpc

    rid = f"spilled-{uuid.uuid4().hex[:8]}"
    # Analytics is not running: the event stays queued in Inference until it stops.
    m = await start_mesh(tmp_path, ["simulator", "inference"], TIERMESH_SIMULATOR__TOKEN_DELAY_MS="0")
    try:
        async with m.channel("inference", "router") as channel:  # as the Router, whose identity headers count
            request = ipb.GenerateRequest(
                messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content="hi")], tier=c.TIER_FAST
            )
            metadata = (("x-request-id", rid), ("x-tiermesh-user", "kept"), ("x-tiermesh-segment", "vip"))
            events = [e async for e in ipb_grpc.InferenceServiceStub(channel).Generate(request, metadata=metadata)]
        cost = events[-1].done.usage.cost_micro_usd
        assert await m.sup.stop_part(m.sup["inference"], grace_s=30) == 0
        assert (tmp_path / "usage-spill.b64").exists()
    finally:
        await m.sup.stop()
    m2 = await start_mesh(
        tmp_path, ["simulator", "inference", "analytics"], TIERMESH_ANALYTICS__DATABASE_URL=fresh_database_url
    )
    try:
        assert await wait_rows(fresh_database_url, rid, 1) == (1, cost)
        conn = await asyncpg.connect(fresh_database_url)
        try:
            row = await conn.fetchrow("SELECT user_id, segment FROM usage_events WHERE request_id = $1", rid)
            assert (row["user_id"], row["segment"]) == ("kept", "vip")
        finally:
            await conn.close()
    finally:
        await m2.sup.stop()

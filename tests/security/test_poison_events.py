"""No single usage event can stop usage from being recorded. Every limit in the contract fits the
column it is stored in; an event outside them is INVALID_ARGUMENT; an event the database refuses
for any other reason, accepted or replayed from a spill file, goes to the dead-letter file alone
while every other event is written; a writer that cannot make progress shows in health and a metric."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tiermesh.analytics.v1 import analytics_service_pb2 as apb
from tiermesh.analytics.v1 import analytics_service_pb2_grpc as apb_grpc
from tiermesh.common.v1 import common_pb2 as c
from tiermesh.common.v1 import limits_pb2

from services.analytics import db
from services.runtime import config
from tests.analytics.conftest import drop_database
from tests.integration.mesh import Mesh, start_mesh
from tests.integration.test_observability import scrape, value
from tests.security.conftest import Attack, eventually

pytestmark = pytest.mark.integration

INT64_MAX = 2**63 - 1
UINT32_MAX = 2**32 - 1
# Where each numeric or time field of a UsageEvent is stored, and how its value becomes the column's.
STORED_AS = {
    "usage.prompt_tokens": ("prompt_tokens", 1),
    "usage.completion_tokens": ("completion_tokens", 1),
    "usage.cost_micro_usd": ("cost_micro_usd", 1),
    "latency": ("latency_us", 1_000_000),
    "time_to_first_token": ("ttft_us", 1_000_000),
    "tier": ("tier", 1),
}
COLUMN_MAX = {"bigint": INT64_MAX, "integer": 2**31 - 1, "smallint": 2**15 - 1}


def limit_of(message: type, path: str) -> float:
    """The largest value the contract allows for field `path` of `message`."""
    *parents, name = path.split(".")
    descriptor = message.DESCRIPTOR  # type: ignore[attr-defined]
    for parent in parents:
        descriptor = descriptor.fields_by_name[parent].message_type
    field = descriptor.fields_by_name[name]
    options = field.GetOptions()
    if options.HasExtension(limits_pb2.limits) and options.Extensions[limits_pb2.limits].HasField("max_value"):
        return float(options.Extensions[limits_pb2.limits].max_value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return float(max(v.number for v in field.enum_type.values))
    if field.type == FieldDescriptor.TYPE_UINT32:
        return float(UINT32_MAX)
    raise AssertionError(f"{path}: no limit in the contract: a value could overflow its column")


async def test_every_limit_in_the_contract_fits_the_column_it_lands_in(attack: Attack) -> None:
    rows = await attack.rows(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'usage_events'"
    )
    types = {r["column_name"]: r["data_type"] for r in rows}
    for path, (column, scale) in STORED_AS.items():
        assert limit_of(apb.UsageEvent, path) * scale <= COLUMN_MAX[types[column]], (path, column, types[column])
    assert types["occurred_at"] == "timestamp with time zone"  # any Timestamp the contract admits (years 1-9999)


def event(request_id: str, **changes: object) -> apb.UsageEvent:
    e = apb.UsageEvent(
        request_id=request_id,
        user="poison-test",
        segment=c.SEGMENT_STANDARD,
        tier=c.TIER_FAST,
        model="sim-fast",
        deployment="sim-fast",
        usage=c.Usage(prompt_tokens=10, completion_tokens=20, cost_micro_usd=3),
        intent=c.INTENT_FAQ,
        complexity=c.COMPLEXITY_LOW,
    )
    e.latency.FromMilliseconds(120)
    e.occurred_at.GetCurrentTime()
    for key, v in changes.items():
        setattr(e, key, v)
    return e


def maximal(request_id: str) -> apb.UsageEvent:
    """Every field at the contract's maximum."""
    e = event(
        request_id,
        user="u" * 256,
        model="m" * 256,
        deployment="d" * 256,
        client_request_id="c" * 128,
        tier=c.TIER_PREMIUM,
        segment=c.SEGMENT_ENTERPRISE,
        intent=c.INTENT_OTHER,
        complexity=c.COMPLEXITY_HIGH,
        cached=True,
        degraded=True,
    )
    e.usage.prompt_tokens = e.usage.completion_tokens = UINT32_MAX
    e.usage.cost_micro_usd = int(limit_of(apb.UsageEvent, "usage.cost_micro_usd"))
    e.latency.FromSeconds(int(limit_of(apb.UsageEvent, "latency")))
    e.time_to_first_token.FromSeconds(int(limit_of(apb.UsageEvent, "time_to_first_token")))
    e.fallback_path.extend(f"{i:02d}" + "p" * 254 for i in range(16))
    e.occurred_at.FromDatetime(datetime.now(UTC) + timedelta(hours=23))
    return e


async def record(attack: Attack, events: list[apb.UsageEvent]) -> None:
    async with attack.mesh.channel("analytics") as channel:
        await apb_grpc.AnalyticsServiceStub(channel).RecordUsage(apb.RecordUsageRequest(events=events), timeout=30)


@pytest.mark.parametrize(
    "case",
    ["latency 2^62 s", "negative latency", "cost beyond the contract", "negative cost", "occurred in year 1970"],
)
async def test_an_event_outside_the_contract_is_invalid_argument(attack: Attack, case: str) -> None:
    rid = f"outside-{uuid.uuid4().hex[:8]}"
    e = event(rid)
    if case == "latency 2^62 s":
        e.latency.seconds = 2**62
    elif case == "negative latency":
        e.latency.seconds = -5
    elif case == "cost beyond the contract":
        e.usage.cost_micro_usd = INT64_MAX
    elif case == "negative cost":
        e.usage.cost_micro_usd = -1
    else:
        e.occurred_at.FromDatetime(datetime(1970, 1, 2, tzinfo=UTC))
    good = event(f"{rid}-good")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await record(attack, [good, e])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "events[1]." in (info.value.details() or ""), info.value.details()
    await asyncio.sleep(0.3)
    assert not await attack.rows("SELECT 1 FROM usage_events WHERE request_id LIKE $1", f"{rid}%")  # all or none


def dead_letters(path: Path, prefix: str) -> list[dict[str, object]]:
    if not path.exists():
        return []
    entries = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [e for e in entries if prefix in json.dumps(e)]


async def test_one_refused_event_among_a_thousand_is_set_aside_and_the_rest_written(attack: Attack) -> None:
    prefix = f"poison-{uuid.uuid4().hex[:8]}-"
    conn = await asyncpg.connect(attack.database_url)
    try:
        # The database refuses a value for a reason of its own (a constraint an operator added).
        await conn.execute("ALTER TABLE usage_events ADD CONSTRAINT no_poison CHECK (model <> 'poison-model')")
        good = [event(f"{prefix}good-{i:04d}", user=f"{prefix}u{i % 7}") for i in range(1000)]
        top = maximal(f"{prefix}maximal")
        bad = event(f"{prefix}refused", model="poison-model")
        await record(attack, [*good[:500], top, *good[500:999]])
        await record(attack, [bad, good[999]])

        async def written() -> int:
            n = await conn.fetchval("SELECT count(*) FROM usage_events WHERE request_id LIKE $1", prefix + "%")
            return int(n) if n == 1001 else 0

        assert await eventually(written, timeout_s=60) == 1001
        stored = await conn.fetchrow("SELECT * FROM usage_events WHERE request_id = $1", f"{prefix}maximal")
    finally:
        await conn.execute("ALTER TABLE usage_events DROP CONSTRAINT IF EXISTS no_poison")
        await conn.close()
    # The event at every maximum is stored exactly: the contract's limits are the columns'.
    assert (stored["prompt_tokens"], stored["completion_tokens"]) == (UINT32_MAX, UINT32_MAX)
    assert stored["cost_micro_usd"] == top.usage.cost_micro_usd
    assert stored["latency_us"] == stored["ttft_us"] == 86_400 * 1_000_000
    assert stored["user_id"] == "u" * 256 and len(stored["fallback_path"]) == 16 and stored["tier"] == 4
    # The refused one, alone, is in the dead-letter file with the reason.
    letters = await eventually(lambda: dead_letters(attack.data_dir / "analytics-rejected.jsonl", prefix))
    assert [e["event"]["request_id"] for e in letters] == [f"{prefix}refused"]  # type: ignore[index]
    assert "no_poison" in str(letters[0]["error"])
    await still_writing(attack.mesh, attack.database_url)


async def still_writing(mesh: Mesh, url: str) -> None:
    """Nothing is stuck: a new event is written, the writer is not stalled, health says SERVING."""
    rid = f"after-{uuid.uuid4().hex[:8]}"
    async with mesh.channel("analytics") as channel:
        await apb_grpc.AnalyticsServiceStub(channel).RecordUsage(
            apb.RecordUsageRequest(events=[event(rid)]), timeout=10
        )
    conn = await asyncpg.connect(url)
    try:
        await eventually(lambda: conn.fetchval("SELECT count(*) FROM usage_events WHERE request_id = $1", rid))
    finally:
        await conn.close()

    async def serving() -> bool:
        stalled = value(await scrape(mesh, "analytics"), "tiermesh_analytics_writer_stalled")
        return stalled == 0 and await health(mesh) == health_pb2.HealthCheckResponse.SERVING

    await eventually(serving, timeout_s=10)


async def health(mesh: Mesh) -> int:
    host, port = config.health_endpoint(mesh.tree, "analytics")
    async with grpc.aio.insecure_channel(f"{host}:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return int(reply.status)


def spill_line(e: apb.UsageEvent, **column: object) -> str:
    """A usage event as Analytics spills it at shutdown (one JSON array of its row per line)."""
    from services.analytics.servicer import to_row
    from services.analytics.writer import _encode

    row = dict(zip(db.COLUMNS, _encode(to_row(e, 0, datetime.now(UTC))), strict=True))
    row.update(column)
    return json.dumps([row[k] for k in db.COLUMNS], ensure_ascii=False)


async def test_bad_events_replayed_from_a_spill_file_are_set_aside_and_the_rest_written(tmp_path: Path) -> None:
    database = f"tiermesh_test_{uuid.uuid4().hex[:12]}"
    url = f"postgresql://postgres@127.0.0.1:5432/{database}"
    prefix = "replay-"
    lines = [spill_line(event(f"{prefix}good-{i:04d}")) for i in range(1000)]
    lines.insert(300, spill_line(maximal(f"{prefix}maximal")))
    lines.insert(10, spill_line(event(f"{prefix}nul"), model="a\x00b"))  # the database refuses NUL in text
    lines.insert(600, spill_line(event(f"{prefix}overflow"), latency_us=2**70))  # no bigint holds it
    lines.insert(700, "{not json")
    lines.insert(800, json.dumps([1, 2, 3]))
    (tmp_path / "analytics-spill.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    mesh = await start_mesh(tmp_path, ["analytics"], TIERMESH_ANALYTICS__DATABASE_URL=url)
    try:
        conn = await asyncpg.connect(url)
        try:

            async def written() -> bool:
                n = await conn.fetchval("SELECT count(*) FROM usage_events WHERE request_id LIKE $1", prefix + "%")
                return bool(n == 1001)

            await eventually(written, timeout_s=60)
        finally:
            await conn.close()
        letters = dead_letters(tmp_path / "analytics-rejected.jsonl", "")
        refused = sorted(str(e["event"]["request_id"]) for e in letters if isinstance(e["event"], dict))  # type: ignore[index]
        assert refused == [f"{prefix}nul", f"{prefix}overflow"]
        assert sorted(str(e["event"]) for e in letters if not isinstance(e["event"], dict)) == [
            "[1, 2, 3]",
            "{not json",
        ]
        await still_writing(mesh, url)
    finally:
        await mesh.sup.stop()
        await drop_database(database)


async def test_a_writer_that_cannot_write_says_so_in_health_and_a_metric(attack: Attack) -> None:
    rid = f"stalled-{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(attack.database_url)
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE usage_events IN ACCESS EXCLUSIVE MODE")  # writes wait behind this
            await record(attack, [event(rid)])

            async def stalled() -> bool:
                metric = value(await scrape(attack.mesh, "analytics"), "tiermesh_analytics_writer_stalled")
                return metric == 1 and await health(attack.mesh) == health_pb2.HealthCheckResponse.NOT_SERVING

            await eventually(stalled, timeout_s=30)
        # The lock is gone: the event is written and the writer serves again.
        await eventually(lambda: conn.fetchval("SELECT count(*) FROM usage_events WHERE request_id = $1", rid))
    finally:
        await conn.close()
    await still_writing(attack.mesh, attack.database_url)


async def test_sums_of_cost_never_overflow_a_report(attack: Attack) -> None:
    """However many events pile up, spend reports and rollups answer: a total beyond what a report
    (int64) holds reads as the largest value, never an error. Sixteen rows stand for the ~9.2
    million events at the contract's maximum cost it takes."""
    user = f"whale-{uuid.uuid4().hex[:8]}"
    per_event = int(limit_of(apb.UsageEvent, "usage.cost_micro_usd"))
    needed = INT64_MAX // per_event + 2  # more maximal events than an int64 total can hold
    conn = await asyncpg.connect(attack.database_url)
    try:
        # The rows straight into the table: sending ~9.2 million events through the API would prove
        # nothing more than these do.
        await conn.execute(
            "INSERT INTO usage_events (request_id, user_id, segment, tier, prompt_tokens, completion_tokens,"
            " cost_micro_usd, occurred_at) SELECT $1 || g, $2, 'enterprise', 4, $3, $3, $4, now()"
            " FROM generate_series(1, $5) g",
            f"{user}-",
            user,
            UINT32_MAX,
            per_event * (needed // 16 + 1),
            16,
        )
    finally:
        await conn.close()
    async with attack.mesh.channel("analytics") as channel:
        spend = await apb_grpc.AnalyticsServiceStub(channel).GetSpend(
            apb.GetSpendRequest(user=user, group_by=[apb.SPEND_DIMENSION_USER]), timeout=10
        )
    assert spend.totals.cost_micro_usd == INT64_MAX and spend.totals.requests == 16
    assert spend.groups[0].totals.cost_micro_usd == INT64_MAX
    conn = await asyncpg.connect(attack.database_url)
    try:
        await eventually(lambda: db.rollup(conn, lag_s=0))  # True once no other replica holds its lock
        rolled = await conn.fetchval("SELECT max(cost_micro_usd) FROM spend_hour WHERE user_id = $1", user)
        assert rolled == INT64_MAX
    finally:
        await conn.close()

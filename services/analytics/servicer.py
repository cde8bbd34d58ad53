"""AnalyticsService RPCs: validate and buffer usage, report spend, stream live totals."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
from google.protobuf.timestamp_pb2 import Timestamp
from tiermesh.analytics.v1 import analytics_service_pb2 as pb
from tiermesh.analytics.v1 import analytics_service_pb2_grpc as pb_grpc
from tiermesh.common.v1 import common_pb2 as c

from services.analytics import db
from services.analytics.live import Live
from services.analytics.writer import CONNECTION_ERRORS, UsageWriter
from services.runtime import tls
from services.runtime.enums import name_of
from services.runtime.errors import InvalidArgument, PermissionDenied, Unavailable
from services.runtime.server import Context
from services.runtime.validation import validate

DIMENSIONS = {
    pb.SPEND_DIMENSION_USER: "user",
    pb.SPEND_DIMENSION_SEGMENT: "segment",
    pb.SPEND_DIMENSION_TIER: "tier",
    pb.SPEND_DIMENSION_MODEL: "model",
    pb.SPEND_DIMENSION_TEAM: "team",
}
MAX_FUTURE = timedelta(days=1)
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
MIN_BUCKET_S = 60
MAX_BUCKETS = 1440
REFRESH_S = 30.0  # watchers recompute at least this often (a new month starts from zero)
DEBOUNCE_S = 0.05


def segment_name(value: int) -> str:
    return name_of(c.Segment, "SEGMENT_", value)


def _clean(text: str) -> str:
    """Text as PostgreSQL can hold it (no NUL), the rest as sent; events are stored so, and
    spend queries look for users so."""
    return text.replace("\x00", "\ufffd")


def spend_scope(requested: str, context: Context) -> str:
    """The user whose spend a read may cover. Through the edge a token reads only its own user's
    (an empty `user` means its own), unless it carries the operator role; a service or an
    operator's tool with a certificate of its own reads what it asks for."""
    requested = _clean(requested)  # as users are stored
    who = tls.edge_reader(context)
    if who is None:
        return requested
    user, operator = who
    if operator:
        return requested
    if not user:
        raise PermissionDenied("spend can be read only with a token that names a user (its 'sub' claim)")
    if requested and requested != user:
        raise PermissionDenied(
            "user: a token may read only its own user's spend; leave user empty or set it to the token's 'sub' "
            "(reading another user's spend needs the operator role)"
        )
    return user


def to_row(e: pb.UsageEvent, i: int, now: datetime) -> db.Row:
    """One event as the row it becomes. The contract's limits (checked before) are the columns'
    ranges; what a limit cannot say (blank ids, the future, NUL in text) is checked here."""
    if not e.request_id.strip():
        raise InvalidArgument(f"events[{i}].request_id: must not be blank")
    occurred = e.occurred_at.ToDatetime(tzinfo=UTC) if e.HasField("occurred_at") else now
    if occurred > now + MAX_FUTURE:
        raise InvalidArgument(f"events[{i}].occurred_at: {occurred.isoformat()} is more than a day in the future")
    return (
        _clean(e.request_id),
        _clean(e.user),
        segment_name(e.segment),
        int(e.tier),
        _clean(e.model),
        _clean(e.deployment),
        e.usage.prompt_tokens,
        e.usage.completion_tokens,
        e.usage.cost_micro_usd,
        e.latency.ToMicroseconds(),
        e.time_to_first_token.ToMicroseconds() if e.HasField("time_to_first_token") else None,
        e.cached,
        e.degraded,
        [_clean(p) for p in e.fallback_path],
        name_of(c.Intent, "INTENT_", e.intent),
        name_of(c.Complexity, "COMPLEXITY_", e.complexity),
        occurred,
        _clean(e.client_request_id),
        _clean(e.team),
    )


async def reachable(pool: Callable[[], Awaitable[asyncpg.Pool]], what: str = "the analytics database") -> asyncpg.Pool:
    """The pool, or UNAVAILABLE saying that `what` (PostgreSQL) cannot be reached."""
    try:
        return await pool()
    except CONNECTION_ERRORS as exc:
        raise Unavailable(f"{what} is unreachable: {exc}") from None


def time_range(request: pb.GetSpendRequest | pb.GetRouteStatsRequest) -> tuple[datetime, datetime | None]:
    """(start, end) of a request's range: unset start is 24 hours before the end, unset end now."""
    end = request.end_time.ToDatetime(tzinfo=UTC) if request.HasField("end_time") else None
    start = (
        request.start_time.ToDatetime(tzinfo=UTC)
        if request.HasField("start_time")
        else (end or datetime.now(UTC)) - timedelta(hours=24)
    )
    if end is not None and end <= start:
        raise InvalidArgument("end_time: must be after start_time")
    return start, end


def decision_row(d: pb.RouteDecisionRecord, i: int, now: datetime) -> db.Row:
    """One sampled decision as its row; what the contract's limits cannot say is checked here."""
    if not d.request_id.strip():
        raise InvalidArgument(f"decisions[{i}].request_id: must not be blank")
    if d.message_sha256 and not SHA256_HEX.fullmatch(d.message_sha256):
        raise InvalidArgument(f"decisions[{i}].message_sha256: must be 64 lower-case hex digits or empty")
    occurred = d.occurred_at.ToDatetime(tzinfo=UTC) if d.HasField("occurred_at") else now
    if occurred > now + MAX_FUTURE:
        raise InvalidArgument(f"decisions[{i}].occurred_at: {occurred.isoformat()} is more than a day in the future")
    if d.message_chars > 2**31 - 1:
        raise InvalidArgument(f"decisions[{i}].message_chars: {d.message_chars} is over 2147483647")
    return (
        _clean(d.request_id),
        occurred,
        _clean(d.rule),
        int(d.tier),
        name_of(c.Intent, "INTENT_", d.intent),
        d.intent_confidence,
        name_of(c.Complexity, "COMPLEXITY_", d.complexity),
        d.complexity_score,
        segment_name(d.segment),
        _clean(d.policy_version),
        [_clean(r) for r in d.reasons],
        d.message_sha256,
        d.message_chars,
        _clean(d.message) if d.message else None,
        d.second_opinion,
    )


def totals_pb(t: db.Totals) -> pb.SpendTotals:
    return pb.SpendTotals(
        requests=t.requests,
        prompt_tokens=t.prompt_tokens,
        completion_tokens=t.completion_tokens,
        cost_micro_usd=t.cost_micro_usd,
    )


def month_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def timestamp(dt: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(dt)
    return ts


class AnalyticsServicer(pb_grpc.AnalyticsServiceServicer):
    def __init__(self, writer: UsageWriter, live: Live, pool: Callable[[], Awaitable[asyncpg.Pool]]) -> None:
        self.writer = writer
        self.live = live
        self.pool = pool
        self.draining = asyncio.Event()

    async def RecordUsage(self, request: pb.RecordUsageRequest, context: Context) -> pb.RecordUsageResponse:
        validate(request)  # every number against the range of the column it is stored in
        now = datetime.now(UTC)
        rows = [to_row(e, i, now) for i, e in enumerate(request.events)]
        return pb.RecordUsageResponse(accepted=self.writer.accept(rows))

    async def _db(self) -> asyncpg.Pool:
        return await reachable(self.pool)

    async def GetSpend(self, request: pb.GetSpendRequest, context: Context) -> pb.GetSpendResponse:
        validate(request)
        start, end = time_range(request)
        if any(g == pb.SPEND_DIMENSION_UNSPECIFIED for g in request.group_by):
            raise InvalidArgument("group_by: SPEND_DIMENSION_UNSPECIFIED is not a dimension")
        bucket = request.bucket_s
        if bucket:
            if bucket < MIN_BUCKET_S:
                raise InvalidArgument(f"bucket_s: must be 0 (no buckets) or from {MIN_BUCKET_S} to 86400 seconds")
            span = ((end or datetime.now(UTC)) - start).total_seconds()
            if span / bucket > MAX_BUCKETS:
                raise InvalidArgument(
                    f"bucket_s: {bucket} s splits the range into {int(span // bucket) + 1} buckets, more than "
                    f"{MAX_BUCKETS}; ask for larger buckets or a shorter range"
                )
        segment = segment_name(request.segment)
        user = spend_scope(request.user, context)
        team = _clean(request.team)  # a filter only narrows: a token still reads only its own user's
        dims = list(dict.fromkeys(request.group_by))
        pool = await self._db()
        try:
            total = await db.totals(pool, start, end, user, segment, team)
            out = pb.GetSpendResponse(totals=totals_pb(total))
            for dim in dims:
                for key, t in await db.groups(pool, DIMENSIONS[dim], start, end, user, segment, team):
                    out.groups.append(pb.SpendGroup(dimension=dim, key=key, totals=totals_pb(t)))
            if bucket:
                buckets: dict[datetime, pb.SpendBucket] = {}
                for at, _, t in await db.bucketed(pool, bucket, None, start, end, user, segment, team):
                    buckets[at] = pb.SpendBucket(start_time=timestamp(at), totals=totals_pb(t))
                for dim in dims:
                    for at, key, t in await db.bucketed(pool, bucket, DIMENSIONS[dim], start, end, user, segment, team):
                        buckets[at].groups.append(pb.SpendGroup(dimension=dim, key=key, totals=totals_pb(t)))
                out.buckets.extend(buckets[at] for at in sorted(buckets))
        except CONNECTION_ERRORS as exc:
            raise Unavailable(f"the analytics database is unreachable: {exc}") from None
        return out

    async def RecordDecisions(self, request: pb.RecordDecisionsRequest, context: Context) -> pb.RecordDecisionsResponse:
        validate(request)
        now = datetime.now(UTC)
        rows = [decision_row(d, i, now) for i, d in enumerate(request.decisions)]
        pool = await self._db()
        try:
            async with pool.acquire() as conn:
                stored = await db.insert_decisions(conn, rows)
        except CONNECTION_ERRORS as exc:
            raise Unavailable(f"the analytics database is unreachable: {exc}") from None
        return pb.RecordDecisionsResponse(stored=stored)

    async def GetRouteStats(self, request: pb.GetRouteStatsRequest, context: Context) -> pb.GetRouteStatsResponse:
        validate(request)
        start, end = time_range(request)
        pool = await self._db()
        try:
            rows = await db.route_stats(pool, start, end)
        except CONNECTION_ERRORS as exc:
            raise Unavailable(f"the analytics database is unreachable: {exc}") from None
        out = pb.GetRouteStatsResponse(decisions=sum(r["decisions"] for r in rows))
        for r in rows:
            out.rules.append(
                pb.RuleStats(
                    rule=r["rule"],
                    tier=c.Tier.ValueType(r["tier"]),
                    decisions=r["decisions"],
                    answered=r["answered"],
                    cost_micro_usd=r["cost_micro_usd"],
                    latency_p50_ms=float(r["latency_p50_us"]) / 1000,
                    fell_back=r["fell_back"],
                    degraded=r["degraded"],
                    cached=r["cached"],
                    second_opinions=r["second_opinions"],
                )
            )
        return out

    async def WatchSpend(self, request: pb.WatchSpendRequest, context: Context) -> AsyncIterator[pb.WatchSpendResponse]:
        validate(request)
        segment = segment_name(request.segment)
        user = spend_scope(request.user, context)
        sub = self.live.subscribe(user, segment)
        last: db.Totals | None = None
        try:
            while not self.draining.is_set():
                sub.changed.clear()
                now = datetime.now(UTC)
                pool = await self._db()
                try:
                    current = await db.totals(pool, month_start(now), None, user, segment)
                except CONNECTION_ERRORS as exc:
                    raise Unavailable(f"the analytics database is unreachable: {exc}") from None
                if current != last:
                    yield pb.WatchSpendResponse(totals=totals_pb(current), as_of=timestamp(now))
                    last = current
                try:
                    await asyncio.wait_for(sub.changed.wait(), REFRESH_S)
                except TimeoutError:
                    continue
                await asyncio.sleep(DEBOUNCE_S)  # one recomputation for a burst of writes
        finally:
            self.live.unsubscribe(sub)

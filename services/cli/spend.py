"""`tiermesh spend` (who spent what, by user, segment, tier, model and team) and `tiermesh migrate`."""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf.json_format import MessageToDict
from tiermesh.analytics.v1 import analytics_service_pb2 as pb
from tiermesh.analytics.v1 import analytics_service_pb2_grpc as pb_grpc
from tiermesh.common.v1 import common_pb2 as c

from services.runtime import config, tls
from services.runtime.enums import value_of
from services.runtime.money import usd

_SINCE = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
DIMENSIONS = (
    ("user", pb.SPEND_DIMENSION_USER),
    ("segment", pb.SPEND_DIMENSION_SEGMENT),
    ("tier", pb.SPEND_DIMENSION_TIER),
    ("model", pb.SPEND_DIMENSION_MODEL),
    ("team", pb.SPEND_DIMENSION_TEAM),
)


def parse_since(raw: str) -> timedelta:
    m = _SINCE.match(raw.strip())
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"--since {raw!r}: use a number and a unit, e.g. 30m, 24h, 7d, 4w")
    return timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})


def _row(name: str, t: pb.SpendTotals) -> str:
    return f"  {name:<28} {t.requests:>9} {t.prompt_tokens:>12} {t.completion_tokens:>12} {usd(t.cost_micro_usd):>16}"


HEADER = f"  {'':<28} {'requests':>9} {'tokens in':>12} {'tokens out':>12} {'cost':>16}"


def render(reply: pb.GetSpendResponse, title: str) -> str:
    lines = [title, HEADER, _row("total", reply.totals)]
    for label, dim in DIMENSIONS:
        groups = [g for g in reply.groups if g.dimension == dim]
        if groups:
            lines.append(f"by {label}:")
            lines.extend(_row(g.key or "(none)", g.totals) for g in groups[:20])
            if len(groups) > 20:
                lines.append(f"  ... {len(groups) - 20} more")
    return "\n".join(lines)


async def spend(
    user: str, segment: str, since: str, watch: bool, as_json: bool, target: str | None, team: str = ""
) -> int:
    try:
        window = parse_since(since)
    except ValueError as exc:
        print(f"tiermesh spend: {exc}", file=sys.stderr)
        return 2
    if team and watch:
        print("tiermesh spend: --watch follows a user or a segment; leave out --team", file=sys.stderr)
        return 2
    tree = config.load()
    addr = target or config.target(tree, "analytics")
    seg = c.Segment.ValueType(value_of(c.Segment, "SEGMENT_", segment))
    async with tls.channel(tree, "analytics", tls.OPERATOR, target=addr) as channel:
        stub = pb_grpc.AnalyticsServiceStub(channel)
        try:
            if watch:
                return await _watch(stub, user, seg, as_json)
            request = pb.GetSpendRequest(user=user, segment=seg, team=team, group_by=[d for _, d in DIMENSIONS])
            request.start_time.FromDatetime(datetime.now(UTC) - window)
            reply = await stub.GetSpend(request, timeout=10)
        except grpc.aio.AioRpcError as exc:
            print(
                f"tiermesh spend: {exc.code().name}: {exc.details()} (is Analytics running at {addr}?)", file=sys.stderr
            )
            return 1
    if as_json:
        print(json.dumps(MessageToDict(reply, always_print_fields_with_no_presence=True)))
        return 0
    parts = (f"user {user}" if user else "", f"segment {segment}" if segment else "", f"team {team}" if team else "")
    who = " ".join(p for p in parts if p)
    print(render(reply, f"spend over the last {since}" + (f" for {who}" if who else "")))
    return 0


async def _watch(
    stub: pb_grpc.AnalyticsServiceAsyncStub, user: str, segment: c.Segment.ValueType, as_json: bool
) -> int:
    tty = sys.stdout.isatty() and not as_json
    async for update in stub.WatchSpend(pb.WatchSpendRequest(user=user, segment=segment)):
        if as_json:
            print(json.dumps(MessageToDict(update, always_print_fields_with_no_presence=True)), flush=True)
            continue
        t = update.totals
        text = "\n".join(
            [
                f"this month so far (as of {update.as_of.ToDatetime(tzinfo=UTC):%Y-%m-%d %H:%M:%S} UTC)"
                + (f" for user {user}" if user else ""),
                HEADER,
                _row("total", t),
                "(Ctrl-C stops)",
            ]
        )
        sys.stdout.write(("\x1b[H\x1b[2J" if tty else "") + text + "\n")
        sys.stdout.flush()
    return 0


async def migrate() -> int:
    from services.analytics import config as analytics_config
    from services.analytics import db

    cfg = analytics_config.load(config.load())
    try:
        if cfg.create_database:
            await db.ensure_database(cfg.database_url)
        import asyncpg

        conn = await asyncpg.connect(cfg.database_url, timeout=5)
    except (OSError, TimeoutError) as exc:
        print(
            f"tiermesh migrate: PostgreSQL at {analytics_config.redact_url(cfg.database_url)} is unreachable: {exc}",
            file=sys.stderr,
        )
        return 1
    try:
        applied = await db.migrate(conn)
    finally:
        await conn.close()
    print(f"applied {', '.join(applied)}" if applied else "the database schema is up to date")
    return 0

"""`tiermesh route`: the route decision for a message, in-process (no mesh, no model call)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from services.router.policy import TIER_NAMES, Router
from services.runtime import config
from services.runtime.errors import TiermeshError


def route(message: str, segment: str, as_json: bool, tier: int = 0) -> int:
    if not message.strip():
        print("tiermesh route: the message is empty; pass the text to route", file=sys.stderr)
        return 2
    try:
        decision = Router.from_config(config.load()).decide(message, segment, tier)
    except TiermeshError as exc:
        print(f"tiermesh route: {exc.code.name}: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(decision.to_json(), ensure_ascii=False))
        return 0
    print(f"\u2192 tier {decision.tier} \u00b7 {TIER_NAMES[decision.tier]}   (policy {decision.policy_version})")
    print(
        f"  intent {decision.intent} ({decision.intent_confidence:.2f}) \u00b7 complexity {decision.complexity}"
        f" ({decision.complexity_score:.2f}) \u00b7 segment {decision.segment}"
    )
    for reason in decision.reasons:
        print(f"  why: {reason}")
    return 0


def route_eval(path: str, as_json: bool) -> int:
    """`tiermesh route --eval FILE.jsonl`: how the shipped model and policy decide on the user's
    own labelled messages."""
    from services.router.evaluate import LabelError, evaluate, read_labelled, render

    try:
        rows = read_labelled(Path(path))
    except LabelError as exc:
        print(f"tiermesh route --eval: {exc}", file=sys.stderr)
        return 2
    report = evaluate(Router.from_config(config.load()), rows)
    print(json.dumps(report.as_dict()) if as_json else render(report))
    return 0


async def route_stats(since: str, as_json: bool, target: str | None) -> int:
    """`tiermesh route --stats`: which rules fired in the sampled decisions (`router.audit`) and
    what their requests cost, from Analytics (operator certificate)."""
    from datetime import UTC, datetime

    import grpc
    from google.protobuf.json_format import MessageToDict
    from tiermesh.analytics.v1 import analytics_service_pb2 as apb
    from tiermesh.analytics.v1 import analytics_service_pb2_grpc as apb_grpc

    from services.cli.spend import parse_since
    from services.runtime import tls
    from services.runtime.money import usd

    try:
        window = parse_since(since)
    except ValueError as exc:
        print(f"tiermesh route --stats: {exc}", file=sys.stderr)
        return 2
    tree = config.load()
    addr = target or config.target(tree, "analytics")
    request = apb.GetRouteStatsRequest()
    request.start_time.FromDatetime(datetime.now(UTC) - window)
    async with tls.channel(tree, "analytics", tls.OPERATOR, target=addr) as channel:
        try:
            reply = await apb_grpc.AnalyticsServiceStub(channel).GetRouteStats(request, timeout=10)
        except grpc.aio.AioRpcError as exc:
            print(
                f"tiermesh route --stats: {exc.code().name}: {exc.details()} (is Analytics at {addr}?)", file=sys.stderr
            )
            return 1
    if as_json:
        print(json.dumps(MessageToDict(reply, always_print_fields_with_no_presence=True)))
        return 0
    rate = config.get_float(config.section(tree, "router", "audit"), "sample_rate", 0.05, where="router.audit")
    print(f"sampled route decisions over the last {since}: {reply.decisions} (router.audit.sample_rate {rate:g})")
    header = (
        f"  {'rule':<34} {'tier':>4} {'decisions':>9} {'share':>6} {'answered':>8} {'cost':>14} {'cost/answer':>14}"
    )
    print(header + f" {'p50 ms':>8} {'fallback':>8} {'degraded':>8} {'cached':>6} {'2nd opinion':>11}")
    for r in reply.rules:
        share = r.decisions / reply.decisions if reply.decisions else 0.0
        per = usd(r.cost_micro_usd // r.answered) if r.answered else "-"
        print(
            f"  {r.rule[:34]:<34} {int(r.tier):>4} {r.decisions:>9} {share:>6.1%} {r.answered:>8} "
            f"{usd(r.cost_micro_usd):>14} {per:>14} {r.latency_p50_ms:>8.1f} "
            f"{r.fell_back:>8} {r.degraded:>8} {r.cached:>6} {r.second_opinions:>11}"
        )
    return 0

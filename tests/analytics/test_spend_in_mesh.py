"""Spend through the whole mesh: a chat's usage reaches PostgreSQL and live watchers, budgets
downgrade or refuse, and `tiermesh spend` reports it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from tiermesh.analytics.v1 import analytics_service_pb2 as apb
from tiermesh.analytics.v1 import analytics_service_pb2_grpc as apb_grpc
from tiermesh.common.v1 import common_pb2 as c
from tiermesh.router.v1 import router_service_pb2 as pb
from tiermesh.router.v1 import router_service_pb2_grpc as pb_grpc

from tests.integration.mesh import Mesh, start_mesh
from tests.integration.test_observability import scrape, value

pytestmark = pytest.mark.integration

OVER_BUDGET = f"spender-{uuid.uuid4().hex[:8]}"
COMPLEX = (
    "Explain how to design a distributed rate limiter with Redis, compare token bucket and sliding window, "
    "and give Python code with tests"
)


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> AsyncIterator[Mesh]:
    m = await start_mesh(
        tmp_path_factory.mktemp("spend"),
        ["simulator", "inference", "analytics", "router", "ratelimit", "envoy"],
        TIERMESH_ANALYTICS__DATABASE_URL=database_url,
        TIERMESH_SIMULATOR__TOKEN_DELAY_MS="2",
        TIERMESH_ANALYTICS__BUDGETS__USERS=json.dumps({OVER_BUDGET: 0.000001}),
        TIERMESH_ANALYTICS__BUDGETS__CACHE_S="0",
        TIERMESH_INFERENCE__ANALYTICS__LINGER_MS="300",
    )
    yield m
    await m.sup.stop()


async def chat(mesh: Mesh, user: str, text: str, segment: str = "standard") -> list[pb.ChatResponse]:
    async with mesh.edge() as channel:
        request = pb.ChatRequest(messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content=text)], bypass_cache=True)
        stub = pb_grpc.RouterServiceStub(channel)
        return [e async for e in stub.Chat(request, timeout=30, metadata=mesh.auth(user, segment))]


async def route(mesh: Mesh, user: str, text: str, segment: str = "vip") -> pb.RouteDecision:
    async with mesh.edge() as channel:
        request = pb.RouteRequest(messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content=text)])
        reply = await pb_grpc.RouterServiceStub(channel).Route(request, timeout=10, metadata=mesh.auth(user, segment))
        return reply.decision


async def month_spend(mesh: Mesh, user: str, requests: int) -> apb.SpendTotals:
    async with mesh.channel("analytics") as channel:
        stub = apb_grpc.AnalyticsServiceStub(channel)
        for _ in range(200):
            reply = await stub.GetSpend(apb.GetSpendRequest(user=user), timeout=5)
            if reply.totals.requests >= requests:
                break
            await asyncio.sleep(0.05)
        return reply.totals


async def test_a_chat_reaches_watchers_and_the_database_with_what_the_client_was_billed(mesh: Mesh) -> None:
    user = f"watched-{uuid.uuid4().hex[:8]}"
    before = await scrape(mesh, "analytics")
    async with mesh.channel("analytics") as channel:
        watch = apb_grpc.AnalyticsServiceStub(channel).WatchSpend(apb.WatchSpendRequest(user=user))
        assert (await asyncio.wait_for(watch.read(), 10)).totals.requests == 0
        events = await chat(mesh, user, "how do I track my order?")
        finished = time.monotonic()
        update = await asyncio.wait_for(watch.read(), 10)
        delay = time.monotonic() - finished
        watch.cancel()
    done = events[-1].done
    assert update.totals.requests == 1
    assert update.totals.cost_micro_usd == done.usage.cost_micro_usd > 0
    assert update.totals.prompt_tokens == done.usage.prompt_tokens
    assert update.totals.completion_tokens == done.usage.completion_tokens
    print(f"watcher saw the chat's spend {delay * 1000:.0f} ms after the done event")

    # Analytics' own metrics moved with it.
    after = await scrape(mesh, "analytics")
    for name, labels in (
        ("tiermesh_analytics_events_accepted_total", {}),
        ("tiermesh_analytics_events_written_total", {}),
        (
            "tiermesh_grpc_requests_total",
            {"method": "/tiermesh.analytics.v1.AnalyticsService/RecordUsage", "code": "OK"},
        ),
    ):
        assert value(after, name, **labels) - value(before, name, **labels) >= 1, name
    assert value(after, "tiermesh_analytics_buffer_capacity_events") == 20000

    env = {**os.environ, **mesh.env}
    tiermesh = str(Path(os.sys.executable).parent / "tiermesh")
    out = subprocess.run(
        [tiermesh, "spend", "--user", user, "--since", "1h", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["totals"]["requests"] == "1"  # uint64 is a string in JSON
    by = {(g["dimension"], g["key"]) for g in report["groups"]}
    assert ("SPEND_DIMENSION_USER", user) in by and ("SPEND_DIMENSION_SEGMENT", "standard") in by
    text = subprocess.run([tiermesh, "spend", "--user", user], env=env, capture_output=True, text=True, timeout=30)
    assert "by model:" in text.stdout and "sim-fast" in text.stdout, text.stdout

    # Who asked and why this tier travel with the usage.
    assert (await month_spend(mesh, user, 1)).requests == 1


async def test_over_budget_user_is_downgraded_with_the_reason_in_the_decision(mesh: Mesh) -> None:
    before = await route(mesh, OVER_BUDGET, COMPLEX)
    assert before.tier >= 2 and not any("budget" in r for r in before.reasons)
    events = await chat(mesh, OVER_BUDGET, COMPLEX, segment="vip")
    assert events[-1].done.usage.cost_micro_usd > 1
    await month_spend(mesh, OVER_BUDGET, 1)
    after = await route(mesh, OVER_BUDGET, COMPLEX)
    assert after.tier == before.tier - 1
    assert after.reasons[0].startswith(f"downgraded from tier {before.tier} to {before.tier - 1}: monthly budget spent")
    # Someone else, same question, is not affected.
    assert (await route(mesh, f"other-{uuid.uuid4().hex[:6]}", COMPLEX)).tier == before.tier


async def test_refuse_policy_answers_resource_exhausted_with_a_message(mesh: Mesh, tmp_path: Path) -> None:
    await month_spend(mesh, OVER_BUDGET, 1)
    analytics_port = mesh.env["TIERMESH_SERVICES__ANALYTICS__PORT"]
    strict = await start_mesh(
        tmp_path,
        ["router"],
        TIERMESH_SERVICES__ANALYTICS__PORT=analytics_port,
        TIERMESH_ANALYTICS__BUDGETS__ACTION="refuse",
        TIERMESH_ANALYTICS__BUDGETS__USERS=json.dumps({OVER_BUDGET: 0.000001}),
        TIERMESH_ANALYTICS__BUDGETS__CACHE_S="0",
        # The same certificates as the mesh whose Analytics this Router uses.
        TIERMESH_TLS__DIR=str(Path(mesh.env["TIERMESH_DATA_DIR"]) / "tls"),
    )
    try:
        async with strict.channel("router", "edge") as channel:
            request = pb.RouteRequest(messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content=COMPLEX)])
            identity = (("x-tiermesh-user", OVER_BUDGET), ("x-tiermesh-segment", "vip"))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await pb_grpc.RouterServiceStub(channel).Route(request, timeout=10, metadata=identity)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "monthly budget spent" in (err.value.details() or "")
            fine = (("x-tiermesh-user", "within-budget"), ("x-tiermesh-segment", "vip"))
            reply = await pb_grpc.RouterServiceStub(channel).Route(request, timeout=10, metadata=fine)
            assert reply.decision.tier >= 2
    finally:
        await strict.sup.stop()


async def test_usage_of_chats_ending_close_together_travels_in_fewer_calls_and_none_is_lost(mesh: Mesh) -> None:
    """After the first usage event of a quiet spell Inference waits linger_ms (300 here) for
    others: six chats one after another are recorded in fewer than six calls, all of them."""
    user = f"together-{uuid.uuid4().hex[:8]}"
    method = "/tiermesh.analytics.v1.AnalyticsService/RecordUsage"
    before = value(await scrape(mesh, "analytics"), "tiermesh_grpc_requests_total", method=method, code="OK")
    for i in range(6):
        await chat(mesh, user, f"hello {i}")
    totals = await month_spend(mesh, user, 6)
    assert totals.requests == 6
    after = value(await scrape(mesh, "analytics"), "tiermesh_grpc_requests_total", method=method, code="OK")
    assert 1 <= after - before < 6

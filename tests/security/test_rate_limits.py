"""Limits hold under a burst. 64 concurrent chats from one standard user (20 a minute): exactly
20 pass and reach the provider, the rest are RESOURCE_EXHAUSTED, and no verdict fails open."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from tiermesh.common.v1 import common_pb2 as c
from tiermesh.router.v1 import router_service_pb2 as pb
from tiermesh.router.v1 import router_service_pb2_grpc as pb_grpc

from tests.integration.mesh import off_the_minute
from tests.security.conftest import STANDARD_PER_MINUTE, Attack
from tests.security.tokens import bearer

pytestmark = pytest.mark.integration

BURST = 64
FAILED_OPEN = "cluster.router.ratelimit.failure_mode_allowed"
VERDICT_ERRORS = "cluster.router.ratelimit.error"


async def test_64_concurrent_chats_from_one_user_let_exactly_the_limit_through(attack: Attack) -> None:
    user = f"burst-{uuid.uuid4().hex[:8]}"
    token = attack.mesh.token(user, "standard")
    marker = uuid.uuid4().hex[:8]
    failed_open, errors = await attack.envoy_stat(FAILED_OPEN), await attack.envoy_stat(VERDICT_ERRORS)
    channels = [attack.mesh.edge() for _ in range(8)]

    async def one(i: int) -> tuple[grpc.StatusCode, list[str]]:
        stub = pb_grpc.RouterServiceStub(channels[i % len(channels)])
        request = pb.ChatRequest(
            messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content=f"hello {marker} {i}")], bypass_cache=True
        )
        kinds: list[str] = []
        try:
            async for event in stub.Chat(request, timeout=60, metadata=bearer(token)):
                kinds.append(event.WhichOneof("event") or "")
        except grpc.aio.AioRpcError as exc:
            return exc.code(), kinds
        return grpc.StatusCode.OK, kinds

    try:
        for ch in channels:
            await ch.channel_ready()
        await off_the_minute(20.0)  # a slow machine can take seconds to answer 64
        results = await asyncio.gather(*(one(i) for i in range(BURST)))
    finally:
        for ch in channels:
            await ch.close()
    codes = [code for code, _ in results]
    assert codes.count(grpc.StatusCode.OK) == STANDARD_PER_MINUTE, codes
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == BURST - STANDARD_PER_MINUTE, codes
    assert all(kinds[-1] == "done" for code, kinds in results if code == grpc.StatusCode.OK)
    assert all(not kinds for code, kinds in results if code != grpc.StatusCode.OK)  # refused before anything
    # Only the allowed chats reached the provider.
    reached = [r for r in await attack.mesh.sim_records() if marker in r["messages"][-1]["content"]]
    assert len(reached) == STANDARD_PER_MINUTE
    # Every verdict came in time: none failed open, none was an error.
    assert await attack.envoy_stat(FAILED_OPEN) == failed_open
    assert await attack.envoy_stat(VERDICT_ERRORS) == errors


async def test_64_concurrent_route_calls_from_one_user_let_exactly_the_limit_through(attack: Attack) -> None:
    token = attack.mesh.token(f"burst-route-{uuid.uuid4().hex[:8]}", "standard")
    failed_open = await attack.envoy_stat(FAILED_OPEN)
    request = pb.RouteRequest(messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content="hello")])
    async with attack.mesh.edge() as channel:
        await channel.channel_ready()
        stub = pb_grpc.RouterServiceStub(channel)

        async def one() -> grpc.StatusCode:
            try:
                await stub.Route(request, timeout=30, metadata=bearer(token))
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        await off_the_minute(20.0)  # a slow machine can take seconds to answer 64
        codes = await asyncio.gather(*(one() for _ in range(BURST)))
    assert codes.count(grpc.StatusCode.OK) == STANDARD_PER_MINUTE, codes
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == BURST - STANDARD_PER_MINUTE
    assert await attack.envoy_stat(FAILED_OPEN) == failed_open

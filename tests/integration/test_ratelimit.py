"""Global rate limits through the real Envoy, the RateLimit service and real Redis."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from tiermesh.common.v1 import common_pb2 as c
from tiermesh.router.v1 import router_service_pb2 as pb
from tiermesh.router.v1 import router_service_pb2_grpc as pb_grpc

from tests.integration.mesh import Mesh, grpc_web_frame, start_mesh

pytestmark = pytest.mark.integration

PER_SECOND = 3
LIMITS = (
    "[{key: segment, value: standard, descriptors: [{key: user, rate_limit: {unit: second, requests_per_unit: "
    + str(PER_SECOND)
    + "}}]},"
    " {key: segment, value: vip, descriptors: [{key: user, rate_limit: {unit: second, requests_per_unit: 100}}]},"
    " {key: remote_address, rate_limit: {unit: second, requests_per_unit: 1000}}]"
)


@pytest.fixture
async def edge(
    tmp_path: Path, private_redis: tuple[int, subprocess.Popen[bytes]]
) -> AsyncIterator[tuple[Mesh, subprocess.Popen[bytes]]]:
    port, proc = private_redis
    m = await start_mesh(
        tmp_path / "mesh",
        ["simulator", "inference", "router", "ratelimit", "envoy"],
        TIERMESH_RATELIMIT__REDIS_URL=f"redis://127.0.0.1:{port}/0",
        TIERMESH_RATELIMIT__CONFIG__DESCRIPTORS=LIMITS,
        TIERMESH_RATELIMIT__LOCAL_BACKSTOP="{max_tokens: 20, fill_interval_s: 60}",
        # A verdict later than the timeout fails open; on a loaded test machine that would let an
        # over-limit request through, so the tests give the service time to answer.
        TIERMESH_RATELIMIT__TIMEOUT_MS="2000",
        TIERMESH_RATELIMIT__REDIS_TIMEOUT_MS="1000",
    )
    yield m, proc
    await m.sup.stop()


def route_request() -> pb.RouteRequest:
    return pb.RouteRequest(messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content="hello")])


async def route(mesh: Mesh, token: str) -> grpc.StatusCode:
    async with mesh.edge() as channel:
        try:
            await pb_grpc.RouterServiceStub(channel).Route(
                route_request(), timeout=5, metadata=(("authorization", f"Bearer {token}"),)
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def at_window_start() -> None:
    """Wait for the start of a fresh one-second window, so a burst stays inside one window."""
    await asyncio.sleep(1.02 - time.time() % 1)


async def test_limit_per_user_window_and_reset(edge: tuple[Mesh, subprocess.Popen[bytes]]) -> None:
    mesh, _ = edge
    alice, bob = mesh.token("alice"), mesh.token("bob")
    await at_window_start()
    results = [await route(mesh, alice) for _ in range(PER_SECOND + 1)]
    bob_result = await route(mesh, bob)  # another user: another bucket
    assert results == [grpc.StatusCode.OK] * PER_SECOND + [grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert bob_result == grpc.StatusCode.OK
    await at_window_start()
    assert await route(mesh, alice) == grpc.StatusCode.OK  # the next window starts fresh


async def test_denial_says_when_to_retry(edge: tuple[Mesh, subprocess.Popen[bytes]]) -> None:
    mesh, _ = edge
    token = mesh.token("carol")
    await at_window_start()
    async with mesh.edge() as channel:
        stub = pb_grpc.RouterServiceStub(channel)
        for _ in range(PER_SECOND):
            await stub.Route(route_request(), metadata=(("authorization", f"Bearer {token}"),))
        call = stub.Route(route_request(), metadata=(("authorization", f"Bearer {token}"),))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        initial = dict(await call.trailing_metadata() or ())
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert initial.get("x-ratelimit-limit", "").startswith(str(PER_SECOND))
    assert initial.get("x-ratelimit-remaining", "").startswith("0")
    assert int(initial.get("x-ratelimit-reset", "0")) >= 1


async def test_grpc_and_grpc_web_share_one_bucket(edge: tuple[Mesh, subprocess.Popen[bytes]]) -> None:
    mesh, _ = edge
    token = mesh.token("dave")
    url = f"http://{mesh.target('envoy')}/tiermesh.router.v1.RouterService/Route"
    headers = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1", "authorization": f"Bearer {token}"}
    await at_window_start()
    statuses = [await route(mesh, token) for _ in range(PER_SECOND - 1)]
    async with httpx.AsyncClient(timeout=5) as client:
        web = await client.post(url, content=grpc_web_frame(route_request().SerializeToString()), headers=headers)
        web_status = web.headers.get("grpc-status") or "0"
        over = await client.post(url, content=grpc_web_frame(route_request().SerializeToString()), headers=headers)
    assert statuses == [grpc.StatusCode.OK] * (PER_SECOND - 1)
    assert web_status == "0"  # the third request in the window, over gRPC-Web, still fits
    # The fourth is denied: gRPC and gRPC-Web count in the same bucket, and a gRPC-Web client
    # reads the denial as RESOURCE_EXHAUSTED too, with the rate-limit headers.
    assert over.headers.get("grpc-status") == "8", (over.status_code, dict(over.headers))
    assert over.headers.get("x-envoy-ratelimited") == "true"
    assert over.headers.get("x-ratelimit-remaining", "").startswith("0")


async def test_redis_down_fails_open_and_the_local_backstop_still_caps(
    edge: tuple[Mesh, subprocess.Popen[bytes]],
) -> None:
    mesh, redis_proc = edge
    redis_proc.terminate()
    redis_proc.wait(timeout=10)
    token = mesh.token("erin")
    first = [await route(mesh, token) for _ in range(PER_SECOND + 2)]
    assert first == [grpc.StatusCode.OK] * (PER_SECOND + 2)  # over the per-user limit, but Redis is down: open
    burst = await asyncio.gather(*(route(mesh, mesh.token(f"user{i}")) for i in range(40)))
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in burst  # the per-instance bucket (20) still holds
    assert burst.count(grpc.StatusCode.OK) <= 20


async def test_rate_limit_service_speaks_envoys_protocol(tmp_path: Path) -> None:
    from tiermesh_rls.v3 import rls_pb2 as rls
    from tiermesh_rls.v3 import rls_pb2_grpc as rls_grpc

    rules = (
        "[{key: plan, value: free, rate_limit: {unit: minute, requests_per_unit: 2}},"
        " {key: plan, value: trial, shadow_mode: true, rate_limit: {unit: minute, requests_per_unit: 1}}]"
    )
    mesh = await start_mesh(tmp_path, ["ratelimit"], TIERMESH_RATELIMIT__CONFIG__DESCRIPTORS=rules)
    domain = mesh.env["TIERMESH_RATELIMIT__CONFIG__DOMAIN"]

    def request(plan: str, hits: int = 0, dom: str = domain) -> rls.RateLimitRequest:
        entry = rls.RateLimitDescriptor.Entry(key="plan", value=plan)
        return rls.RateLimitRequest(
            domain=dom, descriptors=[rls.RateLimitDescriptor(entries=[entry])], hits_addend=hits
        )

    try:
        async with mesh.channel("ratelimit", "edge") as channel:
            stub = rls_grpc.RateLimitServiceStub(channel)
            ok, over = rls.RateLimitResponse.OK, rls.RateLimitResponse.OVER_LIMIT
            first = await stub.ShouldRateLimit(request("free"))
            assert first.overall_code == ok and first.statuses[0].limit_remaining == 1
            assert first.statuses[0].current_limit.requests_per_unit == 2
            assert first.statuses[0].current_limit.unit == rls.RateLimitResponse.RateLimit.MINUTE
            assert 1 <= first.statuses[0].duration_until_reset.seconds <= 60
            assert (await stub.ShouldRateLimit(request("free", hits=5))).overall_code == over  # hits_addend counts
            shadow = [await stub.ShouldRateLimit(request("trial")) for _ in range(3)]
            assert all(r.overall_code == ok for r in shadow)  # shadow mode reports, never denies
            assert shadow[-1].statuses[0].limit_remaining == 0
            assert (await stub.ShouldRateLimit(request("free", dom="other"))).overall_code == ok  # not our domain
            assert (await stub.ShouldRateLimit(request("unknown-plan"))).overall_code == ok  # no rule, no limit
    finally:
        await mesh.sup.stop()


async def test_rate_limit_service_down_fails_open(edge: tuple[Mesh, subprocess.Popen[bytes]]) -> None:
    mesh, _ = edge
    await mesh.sup.stop_part(mesh.sup["ratelimit"])
    token = mesh.token("frank")
    results = [await route(mesh, token) for _ in range(PER_SECOND + 2)]
    assert results == [grpc.StatusCode.OK] * (PER_SECOND + 2)  # no verdict within the timeout: let it through

"""Rate limits under a burst: 64 concurrent requests from one standard user (20 a minute) through
Envoy, round after round, with the shipped limits and timeouts.

Prints how many passed each round (the limit, if every verdict came in time), how many verdicts
failed open, the verdict time as Envoy measured it (p50/p99 of its call to the RateLimit service),
and the RateLimit service's CPU per verdict.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from pathlib import Path

import grpc
import httpx
from tiermesh.common.v1 import common_pb2 as c
from tiermesh.router.v1 import router_service_pb2 as pb
from tiermesh.router.v1 import router_service_pb2_grpc as pb_grpc

from bench.load import cpu_seconds
from services.cli.mesh import Mesh, start_mesh
from services.runtime import config

BURST = 64
ROUNDS = 12
# The shipped per-user limits; the per-address one raised so that many bursts from this one
# machine's address fit in a minute.
LIMITS = (
    "[{key: segment, value: standard, descriptors: [{key: user, rate_limit: {unit: minute, requests_per_unit: 20}}]},"
    " {key: remote_address, rate_limit: {unit: minute, requests_per_unit: 1000000}}]"
)


async def envoy_stats(mesh: Mesh) -> dict[str, object]:
    host, port = config.endpoint(mesh.tree, "envoy_admin")
    async with httpx.AsyncClient(timeout=10) as client:
        data = (await client.get(f"http://{host}:{port}/stats?format=json&filter=ratelimit")).json()
    out: dict[str, object] = {}
    for stat in data["stats"]:
        if "name" in stat:
            out[stat["name"]] = stat["value"]
        elif "histograms" in stat:
            quantiles = stat["histograms"]["supported_quantiles"]
            for h in stat["histograms"]["computed_quantiles"]:
                out[h["name"]] = {q: v["cumulative"] for q, v in zip(quantiles, h["values"], strict=True)}
    return out


async def burst(mesh: Mesh, channels: list[grpc.aio.Channel]) -> int:
    token = mesh.token(f"bench-{uuid.uuid4().hex[:8]}", "standard")
    request = pb.RouteRequest(messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content="hello")])

    async def one(i: int) -> bool:
        try:
            await pb_grpc.RouterServiceStub(channels[i % len(channels)]).Route(
                request, timeout=30, metadata=(("authorization", f"Bearer {token}"),)
            )
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
            return False
        return True

    if time.time() % 60 > 57:  # one calendar minute per burst
        await asyncio.sleep(60.2 - time.time() % 60)
    return sum(await asyncio.gather(*(one(i) for i in range(BURST))))


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mesh = await start_mesh(
            Path(tmp),
            ["simulator", "inference", "router", "ratelimit", "envoy"],
            TIERMESH_RATELIMIT__CONFIG__DESCRIPTORS=LIMITS,
        )
        try:
            proc = mesh.sup["ratelimit"].proc
            assert proc is not None
            channels = [mesh.edge() for _ in range(8)]
            for ch in channels:
                await ch.channel_ready()
            await burst(mesh, channels)  # warm: connections, JWT cache, Redis
            await asyncio.sleep(6)
            before = await envoy_stats(mesh)
            passed = []
            cpu = 0.0  # the service's CPU while bursts are answered (not while it idles between them)
            for _ in range(ROUNDS):
                cpu_before = cpu_seconds(proc.pid)
                passed.append(await burst(mesh, channels))
                cpu += cpu_seconds(proc.pid) - cpu_before
                await asyncio.sleep(1.1)  # Envoy's local backstop (500 a second) refills between bursts
            await asyncio.sleep(6)  # Envoy computes histogram quantiles when it flushes stats (every 5 s)
            after = await envoy_stats(mesh)
            for ch in channels:
                await ch.close()
        finally:
            await mesh.sup.stop()
    failed_open = int(after.get("cluster.router.ratelimit.failure_mode_allowed", 0)) - int(
        before.get("cluster.router.ratelimit.failure_mode_allowed", 0)
    )
    verdicts = BURST * ROUNDS
    times = after.get("cluster.ratelimit.upstream_rq_time", {})
    assert isinstance(times, dict)
    print(f"rate limits under a burst ({BURST} concurrent requests from one standard user, 20 a minute, x{ROUNDS})")
    print(f"  passed per burst     {passed}")
    print(f"  failed open          {failed_open} of {verdicts} verdicts")
    p50, p99, top = (float(times.get(q) or 0) for q in (50, 99, 100))
    print(f"  verdict time (Envoy) p50 {p50:.1f} ms  p99 {p99:.1f} ms  max {top:.1f} ms")
    print(f"  RateLimit CPU        {cpu / verdicts * 1e6:.0f} us per verdict")


if __name__ == "__main__":
    asyncio.run(main())

"""The per-address limit counts the address connected to the edge; X-Forwarded-For and friends
from a client are not believed, unless the operator says proxies in front may be."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
from tiermesh.common.v1 import common_pb2 as c
from tiermesh.router.v1 import router_service_pb2 as pb

from tests.integration.mesh import Mesh, start_mesh
from tests.security.conftest import Attack
from tests.security.tokens import bearer
from tests.security.wire import frame, grpc_web

pytestmark = pytest.mark.integration

ROUTE = "/tiermesh.router.v1.RouterService/Route"
ADDRESS_LIMIT = 5  # per second, in these tests' own meshes


def spoofed(i: int) -> dict[str, str]:
    return {
        "x-forwarded-for": f"203.0.113.{i}",
        "x-real-ip": f"198.51.100.{i}",
        "forwarded": f"for=192.0.2.{i}",
        "x-envoy-external-address": f"192.0.2.{i}",
    }


async def statuses(mesh: Mesh, n: int, headers: dict[str, str]) -> list[str]:
    """The gRPC status of `n` Route calls in one second, each claiming another client address."""
    token = mesh.token(f"addr-{uuid.uuid4().hex[:8]}", "enterprise")
    body = frame(pb.RouteRequest(messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content="hi")]).SerializeToString())
    await asyncio.sleep(1.02 - time.time() % 1)  # the start of a fresh one-second window
    out = []
    for i in range(n):
        reply = await grpc_web(
            f"http://{mesh.target('envoy')}{ROUTE}", body, {**dict(bearer(token)), **(spoofed(i) if headers else {})}
        )
        out.append(reply.grpc_status or "0")
    return out


LIMITS = (
    "[{key: segment, value: enterprise,"
    " descriptors: [{key: user, rate_limit: {unit: second, requests_per_unit: 1000}}]},"
    f" {{key: remote_address, rate_limit: {{unit: second, requests_per_unit: {ADDRESS_LIMIT}}}}}]"
)


async def small_edge(tmp_path: Path, **env: str) -> Mesh:
    return await start_mesh(
        tmp_path,
        ["simulator", "inference", "router", "ratelimit", "envoy"],
        TIERMESH_RATELIMIT__CONFIG__DESCRIPTORS=LIMITS,
        **env,
    )


async def test_spoofed_forwarding_headers_share_the_bucket_of_the_real_address(tmp_path: Path) -> None:
    mesh = await small_edge(tmp_path)
    try:
        codes = await statuses(mesh, ADDRESS_LIMIT + 3, spoofed(0))
    finally:
        await mesh.sup.stop()
    # Every request came from 127.0.0.1, whatever its headers said: one bucket, and it ran out.
    assert codes == ["0"] * ADDRESS_LIMIT + ["8"] * 3


async def test_trusted_proxy_hops_believe_the_proxy_in_front(tmp_path: Path) -> None:
    mesh = await small_edge(tmp_path, TIERMESH_ENVOY__TRUSTED_PROXY_HOPS="1")
    try:
        codes = await statuses(mesh, ADDRESS_LIMIT + 3, spoofed(0))
    finally:
        await mesh.sup.stop()
    # One trusted proxy in front: the address it names (different each time) is the client.
    assert codes == ["0"] * (ADDRESS_LIMIT + 3)


async def test_the_shared_mesh_counts_one_address(attack: Attack) -> None:
    remaining = []
    token = attack.mesh.token(f"addr-{uuid.uuid4().hex[:8]}", "enterprise")  # 1000 a minute: the address binds first
    body = frame(pb.RouteRequest(messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content="hi")]).SerializeToString())
    if time.time() % 60 > 55:
        await asyncio.sleep(60.5 - time.time() % 60)
    for i in range(6):
        reply = await grpc_web(
            f"http://{attack.mesh.target('envoy')}{ROUTE}", body, {**dict(bearer(token)), **spoofed(i)}
        )
        remaining.append(int(reply.headers["x-ratelimit-remaining"]))
    assert remaining == list(range(remaining[0], remaining[0] - 6, -1)), remaining

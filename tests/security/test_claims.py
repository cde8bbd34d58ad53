"""A token is accepted only with an exp, a sub, and a segment that is exactly one of the
contract's; anything else is refused at the edge naming the claim, and no odd claim gains a tier
or escapes the per-user limit."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from tiermesh.common.v1 import common_pb2 as c
from tiermesh.router.v1 import router_service_pb2 as pb
from tiermesh.router.v1 import router_service_pb2_grpc as pb_grpc

from services.runtime import identity
from tests.security.conftest import Attack
from tests.security.tokens import ABSENT, bearer, claims, signed
from tests.security.wire import frame, grpc_web

pytestmark = pytest.mark.integration

ROUTE = "/tiermesh.router.v1.RouterService/Route"
HARD = (
    "Please review this design: we run 30 microservices on Kubernetes and want to move our order "
    "pipeline to event sourcing. Compare Kafka and RabbitMQ, list the risks, and give a step by step "
    "migration plan with a rollback strategy and how to test each stage."
)

ODD: dict[str, tuple[dict[str, Any], str]] = {
    "segment VIP": ({"segment": "VIP"}, "'segment'"),
    "segment padded": ({"segment": " vip "}, "'segment'"),
    "segment Enterprise": ({"segment": "Enterprise"}, "'segment'"),
    "segment admin": ({"segment": "admin"}, "'segment'"),
    "segment array": ({"segment": ["vip"]}, "'segment'"),
    "segment number": ({"segment": 3}, "'segment'"),
    "segment object": ({"segment": {"tier": 4}}, "'segment'"),
    "segment missing": ({"segment": ABSENT}, "'segment'"),
    "sub missing": ({"sub": ABSENT}, "'sub'"),
    "sub empty": ({"sub": ""}, "'sub'"),
    "sub too long": ({"sub": "x" * 257}, "'sub'"),
    "sub with a newline": ({"sub": "eve\nx-tiermesh-segment: enterprise"}, "'sub'"),
    "exp missing": ({"exp": ABSENT}, "'exp'"),
}


def route_request(text: str = HARD) -> pb.RouteRequest:
    return pb.RouteRequest(messages=[c.ChatMessage(role=c.CHAT_ROLE_USER, content=text)])


@pytest.mark.parametrize("case", list(ODD))
async def test_a_token_with_an_odd_claim_is_refused_naming_the_claim(attack: Attack, case: str) -> None:
    changes, named = ODD[case]
    token = signed(attack.mesh, claims(attack.mesh, **changes))
    before = sum('"routed"' in line for line in attack.mesh.logs("router"))
    async with attack.mesh.edge() as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await pb_grpc.RouterServiceStub(channel).Route(route_request(), timeout=10, metadata=bearer(token))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert named in (info.value.details() or ""), info.value.details()
    url = f"http://{attack.mesh.target('envoy')}{ROUTE}"
    for http2 in (False, True):
        web = await grpc_web(url, frame(route_request().SerializeToString()), dict(bearer(token)), http2=http2)
        assert (web.status, web.grpc_status) == (200, "16") and named in web.grpc_message, web
    assert sum('"routed"' in line for line in attack.mesh.logs("router")) == before  # no service saw it


async def test_every_accepted_request_is_counted_against_its_user(attack: Attack) -> None:
    domain = attack.mesh.env["TIERMESH_RATELIMIT__CONFIG__DOMAIN"]
    client = aioredis.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        for segment in identity.SEGMENTS:
            user = f"counted-{segment}-{uuid.uuid4().hex[:8]}"
            token = signed(attack.mesh, claims(attack.mesh, sub=user, segment=segment))
            async with attack.mesh.edge() as channel:
                for _ in range(3):
                    reply = await pb_grpc.RouterServiceStub(channel).Route(
                        route_request(), timeout=10, metadata=bearer(token)
                    )
            # The segment is the verified one, exactly: tier 4 only for vip and enterprise.
            assert reply.decision.segment == c.Segment.Value("SEGMENT_" + segment.upper())
            assert (reply.decision.tier == 4) == (segment != "standard")
            keys = [k async for k in client.scan_iter(f"{domain}_segment_{segment}_user_{user}_*")]
            counted = sum([int(await client.get(k) or 0) for k in keys])
            assert keys and counted == 3, (segment, keys)
    finally:
        await client.aclose()
